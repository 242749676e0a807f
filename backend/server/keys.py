"""`parallax keys`: CURVE key pairs for a server bound beyond loopback."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for server and client key pairs")


def run(args: argparse.Namespace) -> int:
    """Write `server.key(_secret)` and `client.key(_secret)`; copy client.key into the server's clients folder."""
    from zmq.auth import create_certificates

    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("server", "client"):
        public, secret = create_certificates(str(args.out), name)
        print(f"{name}: public {public}, secret {secret}")
    return 0
