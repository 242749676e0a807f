"""`parallax serve`: run the backend server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from .protocol import Limits
from .server import Server, ServerConfig


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default loopback)")
    parser.add_argument("--checkpoint", default=None, help="safetensors checkpoint (default: the embedded model)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--jobs", default=None, help="job folder root (default: ~/.cache/parallax/jobs)")
    parser.add_argument("--max-frames", type=int, default=Limits.max_frames)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    parser.add_argument("--max-message-mb", type=int, default=Limits.max_message_bytes >> 20)
    parser.add_argument("--curve-secret", type=Path, default=None, help="server secret key file (parallax keys)")
    parser.add_argument("--curve-clients", type=Path, default=None, help="folder of allowed client public keys")


def run(args: argparse.Namespace) -> int:
    from ..pipelines.runners import build_runners, load_bundle

    bundle = load_bundle(args.checkpoint, args.device)
    limits = Limits(max_message_bytes=args.max_message_mb << 20, max_frames=args.max_frames,
                    max_pixels=args.max_pixels)
    jobs = Path(args.jobs) if args.jobs else Path.home() / ".cache" / "parallax" / "jobs"
    config = ServerConfig(bind=args.bind, job_root=jobs, limits=limits, curve_secret=args.curve_secret,
                          curve_clients=args.curve_clients, info=bundle.info())
    server = Server(config, build_runners(bundle))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: server.stop())
    print(f"parallax serve: listening on {server.endpoint} ({bundle.describe()}); jobs in {jobs}", flush=True)
    server.serve_forever()
    print("parallax serve: stopped", flush=True)
    return 0
