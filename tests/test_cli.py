"""The command line: every command's module configures without error and answers --help."""

import subprocess
import sys

import pytest

from backend.cli import COMMANDS, build_parser


def test_every_command_configures():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, cmd in sub.choices.items():
        assert cmd.get_default("_import_error") is None, cmd.get_default("_import_error")
        assert cmd.get_default("_module") == COMMANDS[name][0]


@pytest.mark.parametrize("name", ["bench", "nvs", "train"])
def test_help_runs_in_a_fresh_process(name):
    out = subprocess.run([sys.executable, "-m", "backend.cli", name, "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: parallax " + name in out.stdout
