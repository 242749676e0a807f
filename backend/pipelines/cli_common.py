"""What every job command shares: model flags, sampling flags, a progress bar."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from .bundle import ModelBundle, load_bundle
from .engine import Progress


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None, help="safetensors checkpoint (default: the embedded model)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def add_sampling_args(parser: argparse.ArgumentParser, steps: int = 20) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    parser.add_argument("--sampler", default="heun", choices=("euler", "heun", "dpmpp_2m"))


def sampling_kwargs(args: argparse.Namespace) -> dict:
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    return {"steps": args.steps, "seed": args.seed, "sampler": args.sampler}


def bundle_from_args(args: argparse.Namespace) -> ModelBundle:
    bundle = load_bundle(args.checkpoint, args.device)
    if not bundle.trained:
        print(f"warning: {bundle.describe()}: outputs will not be meaningful")
    return bundle


@contextmanager
def progress_bar(description: str) -> Iterator[Progress]:
    """A tqdm bar driven by a pipeline's progress(fraction, message) callback."""
    with tqdm(total=1000, desc=description, unit="‰", bar_format="{l_bar}{bar}| {postfix}") as bar:

        def update(fraction: float, message: str = "") -> None:
            bar.n = round(min(max(fraction, 0.0), 1.0) * 1000)
            bar.set_postfix_str(message, refresh=True)

        yield update
        update(1.0, "done")
