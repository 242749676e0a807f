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
    "nvs": ("backend.pipelines.nvs", "novel views of an image along a camera path (transforms.json)"),
    "interpolate": ("backend.pipelines.interpolate", "frames between two images"),
    "cameras": ("backend.pipelines.cameras", "recover cameras (and depth, points) from a video"),
    "depth": ("backend.pipelines.depth", "depth for an image, a video or a folder of frames"),
    "edit": ("backend.pipelines.edit", "propagate an edit of the first frame through a clip"),
    "mesh": ("backend.pipelines.mesh", "TSDF-fuse a clip with depth and cameras into a coloured mesh"),
    "train": ("backend.train.cli", "train on clip folders, videos and transforms.json scenes; --export ships it"),
    "eval": ("backend.eval.run", "evaluate the model beside classical baselines on clips with ground truth"),
    "data": ("backend.data.synth", "make data sets: `parallax data synth` renders Blender scenes"),
    "demo": ("backend.demo", "run the whole thing headless: Cycles shot, real backend, add-on operators, ATE"),
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
        try:
            importlib.import_module(module_name).configure(cmd)
        except Exception as exc:  # one broken or missing module must not break every command
            cmd.set_defaults(_import_error=f"{name} is unavailable: {exc}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_import_error", None):
        print(f"parallax: {args._import_error}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        print(f"parallax {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
