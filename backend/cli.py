"""`parallax` command line: one subcommand per job, each living in its own module.

Subcommands are imported lazily so `parallax --help` stays fast and a broken optional dependency
only affects the command that needs it. A command module exposes `configure(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Keep in step with DESIGN.md's list of commands.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("backend.server.serve", "run the backend server (ZeroMQ ROUTER) for the Blender add-on"),
    "keys": ("backend.server.keys", "write CURVE key pairs for serving beyond loopback"),
    "bench": ("backend.bench", "print benchmark tables (ratios measured in one run)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parallax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module_name)
        importlib.import_module(module_name).configure(cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"parallax {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
