"""`parallax train`: train (or resume) a model on clip folders, videos and transforms.json scenes.

    parallax train --data DATA_DIR [--data MORE ...] --out runs/tiny --preset tiny --steps 4000 [--resume]
                   [--export backend/assets/parallax-tiny.safetensors]
    torchrun --nproc_per_node 4 -m backend.cli train ...   # DDP, one process per GPU

Every TrainConfig field is a flag of the same name (underscores become dashes); see docs/training.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing

from backend.train.trainer import MASK_NAMES, TrainConfig, Trainer, export_default, latest_checkpoint


def configure(parser: argparse.ArgumentParser) -> None:
    """Add one flag per TrainConfig field (help from its comment-free name and default), plus run flags."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag, kind, default = "--" + f.name.replace("_", "-"), hints[f.name], f.default
        if f.name == "data":
            parser.add_argument(flag, action="append", required=False, default=None, metavar="PATH",
                                help="clip folder, video, transforms.json scene or a folder of them (repeatable)")
        elif kind is bool:
            parser.add_argument(flag, action="store_true", help=f"(default {default})")
        elif typing.get_origin(kind) is tuple:
            n = len(MASK_NAMES) if f.name == "mask_weights" else len(default)
            what = f" in the order {', '.join(MASK_NAMES)}" if f.name == "mask_weights" else ""
            parser.add_argument(flag, type=float, nargs=n, default=None, help=f"(default {default}){what}")
        else:
            parser.add_argument(flag, type=kind, default=None, help=f"(default {default})")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("--export", metavar="PATH", default=None,
                        help="after training, write the EMA weights (bf16) as the shipped .safetensors model")
    parser.add_argument("--export-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="storage dtype of the exported file (default bfloat16)")


def config_from_args(args: argparse.Namespace, base: dict | None = None) -> TrainConfig:
    """TrainConfig from parsed flags; flags left out keep `base` (a resumed run's config) or the defaults."""
    given = dict(base or {})
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None and value is not False:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**given)


def _saved_config(out: str | None) -> dict | None:
    """The config stored in the latest checkpoint of run folder `out` (None if there is none)."""
    ckpt = latest_checkpoint(out) if out else None
    if ckpt is None:
        return None
    saved = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))["config"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}


def run(args: argparse.Namespace) -> int:
    base = _saved_config(args.out or TrainConfig.out) if args.resume else None
    cfg = config_from_args(args, base)
    if not cfg.data:
        raise ValueError("train: give at least one --data path")
    trainer = Trainer(cfg)
    if args.resume:
        if latest_checkpoint(cfg.out) is None:
            raise FileNotFoundError(f"train --resume: no checkpoint in {cfg.out}/checkpoints")
        step = trainer.resume()
        if trainer.dist.main:
            print(f"resumed {cfg.out} at step {step}")
    trainer.train()
    if args.export and trainer.dist.main:
        path = export_default(cfg.out, args.export, storage_dtype=args.export_dtype)
        print(f"exported the EMA weights of {latest_checkpoint(cfg.out)} to {path}")
    return 0
