"""The trainer: masked flow matching over RGB, depth and ray tokens, one process or many (torchrun).

Per step and sample a mask pattern is drawn (backend/diffusion/masks.py's default mixture, plus the
geometry-derived ones the dataset prepares: warp visibility for novel views, tracked boxes for edit
propagation), restricted to the modalities the sample has, turned into per-token training levels
(flow.training_sigma) and scored by flow.flow_loss. Optimisation follows the published 4D system and
nanoGPT: AdamW (β = 0.9/0.95, weight decay 0.05 on matrices only), linear warm-up then cosine decay
(Loshchilov & Hutter, SGDR, 2017), gradient-norm clipping, an EMA of the weights (ema.py; the EMA is
shipped), bf16 autocast on CUDA and fp32 on the CPU.

Reproducibility: a sample is a pure function of (data seed, index), a step's batch indices are a pure
function of (step, rank), and the mask/level/noise generators are reseeded from (seed, rank, step)
every step. So the state to resume is exactly model, EMA, optimizer and step — a resumed run equals an
uninterrupted one bit for bit on the CPU. This is also why a step-indexed batch sampler plays the role
of DistributedSampler here: each rank draws disjoint indices, and no epoch permutation has to be
resumed mid-epoch. Checkpoints are safetensors only (the optimizer state is flattened to tensors plus
JSON metadata); never pickle.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader

from backend.diffusion import masks
from backend.diffusion.flow import FlowConfig, flow_loss, training_sigma
from backend.model.checkpoint import load_checkpoint, read_safetensors, save_checkpoint
from backend.model.config import DiTConfig, preset
from backend.model.dit import DiT
from backend.model.tokenizer import MODALITIES, TokenLayout
from backend.train.dataset import ClipDataset, DataConfig, collate
from backend.train.ema import EMA
from backend.train.logging import CsvLog, plot_curves, read_log

# mask patterns in the order of TrainConfig.mask_weights: the 7 of default_training_mixture, then ours
MASK_NAMES = ("random_patches", "first_frame", "first_frame_rays", "endpoints", "endpoints_rays", "all_rgb",
              "all_depth", "warp", "track")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint (trainer.json)."""

    data: tuple[str, ...] = ()  # clip folders, videos, transforms.json scenes, or folders of them
    out: str = "runs/tiny"  # run folder: checkpoints/, log.csv, loss.png
    preset: str = "tiny"  # DiT preset (backend/model/config.py)
    frames: int = 8  # frames per window (the shipped `window`)
    height: int = 48  # training height in pixels (multiple of the patch)
    width: int = 64  # training width in pixels
    batch: int = 4  # samples per step per process
    steps: int = 4000  # total optimizer steps (the cosine decay ends here)
    lr: float = 3e-4  # peak learning rate (after warm-up)
    min_lr_ratio: float = 0.1  # final lr = lr × this at the end of the cosine
    warmup: int = 200  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW decoupled weight decay (matrices only)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    grad_clip: float = 1.0  # max global gradient norm (0 = no clipping)
    ema_decay: float = 0.999  # EMA decay (warmed up as min(d, (1 + t)/(10 + t)))
    mask_weights: tuple[float, ...] = (0.25, 0.1, 0.1, 0.05, 0.1, 0.15, 0.05, 0.15, 0.05)  # per MASK_NAMES
    shift: float = 3.0  # flow-matching timestep shift (FlowConfig.shift)
    context_noise_prob: float = 0.5  # chance a sample's observed tokens get a low noise level (FlowConfig)
    max_stride: int = 3  # temporal stride of windows drawn in [1, max_stride]
    crop_scale: tuple[float, float] = (0.6, 1.0)  # random crop side relative to the largest crop
    seed: int = 0  # seeds the model init, the data and every per-step generator
    save_every: int = 500  # checkpoint every this many steps (and at the end)
    keep: int = 2  # checkpoints kept on disk (oldest deleted first)
    log_every: int = 10  # CSV row / plot every this many steps
    num_workers: int = 0  # DataLoader workers (0 on a 2-core CPU: the model needs both)
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch intra-op CPU threads (0 = torch's default); bit-exact CPU resumes need a fixed count
    compile: bool = False  # torch.compile the model (faster steps after a slow first one)
    grad_checkpointing: bool = False  # recompute blocks in backward (memory for speed)
    quiet: bool = False  # no progress bar

    def __post_init__(self) -> None:
        self.data = tuple(str(p) for p in self.data)
        preset(self.preset)  # raises ValueError naming the preset
        for name in ("frames", "height", "width", "batch", "steps", "save_every", "keep", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        patch = preset(self.preset).patch
        for name, p in zip(("frames", "height", "width"), patch):
            if getattr(self, name) % p:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be a multiple of the patch {p}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0:
            raise ValueError(f"TrainConfig: need lr > 0, 0 <= min_lr_ratio <= 1, warmup >= 0; got "
                             f"{self.lr}, {self.min_lr_ratio}, {self.warmup}")
        warp = MASK_NAMES.index("warp")
        others = sum(w for i, w in enumerate(self.mask_weights) if i != warp)
        if len(self.mask_weights) != len(MASK_NAMES) or min(self.mask_weights) < 0 or others <= 0:
            # samples without geometry cannot draw `warp`: another pattern must always be possible
            raise ValueError(f"TrainConfig.mask_weights must be {len(MASK_NAMES)} non-negative numbers "
                             f"({', '.join(MASK_NAMES)}) with a positive sum outside warp, got {self.mask_weights}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")

    def data_config(self) -> DataConfig:
        return DataConfig(frames=self.frames, height=self.height, width=self.width, max_stride=self.max_stride,
                          crop_scale=tuple(self.crop_scale), seed=self.seed)

    def flow_config(self) -> FlowConfig:
        return FlowConfig(shift=self.shift, context_noise_prob=self.context_noise_prob)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then cosine decay to lr·min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * t))


def model_metadata(cfg: TrainConfig, step: int) -> dict:
    """The extra metadata every saved model carries (backend/pipelines/bundle.py reads window/area/flow)."""
    return {"window": cfg.frames, "area": cfg.height * cfg.width, "flow": asdict(cfg.flow_config()),
            "step": step, "preset": cfg.preset, "train_size": [cfg.height, cfg.width]}


# ------------------------------------------------------------------------------------------ masks


def _warp_mask(layout: TokenLayout, visible: Tensor) -> masks.TaskMask:
    """Novel views as the nvs job asks: RGB and depth observed where frame 0 warps, all rays given."""
    m = masks.combine(masks.from_pixel_mask(layout, visible, "rgb"), masks.from_pixel_mask(layout, visible, "depth"))
    sigma = m.task_sigma.clone()
    sigma[:, layout.modality_slice("rays")] = 0.0
    return masks.TaskMask(sigma, m.available)


def training_masks(layout: TokenLayout, batch: dict[str, Tensor], weights: tuple[float, ...],
                   generator: torch.Generator) -> masks.TaskMask:
    """One pattern per sample drawn with `weights` (MASK_NAMES order); warp only where the sample has
    depth and cameras; then restricted to the sample's modalities (masks.with_availability)."""
    B = batch["rgb"].shape[0]
    dev = batch["rgb"].device
    w = torch.tensor(weights, dtype=torch.float64).expand(B, -1).clone()  # (B, 9)
    w[~batch["has_geometry"].cpu(), MASK_NAMES.index("warp")] = 0.0
    choice = torch.multinomial(w, 1, generator=generator)[:, 0].to(dev)  # (B,)
    patterns = [p for _, p in masks.default_training_mixture()]
    made = [p(layout, B, generator, dev) for p in patterns]
    made.append(_warp_mask(layout, batch["warp_visible"]))
    made.append(masks.from_pixel_mask(layout, batch["track_visible"], "rgb"))
    sigma = torch.ones(B, layout.length, device=dev)
    avail = torch.ones(B, len(MODALITIES), dtype=torch.bool, device=dev)
    for i, m in enumerate(made):
        rows = choice == i
        sigma = torch.where(rows[:, None], m.task_sigma.to(dev), sigma)
        avail = torch.where(rows[:, None], m.available.to(dev), avail)
    return masks.with_availability(layout, masks.TaskMask(sigma, avail), batch["available"])


# ------------------------------------------------------------------------------------------ state I/O


def save_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    """Optimizer state as safetensors: tensors flattened to `state.<param>.<key>`, the rest as JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"state.{pid}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    meta = {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer(path: Path, opt: torch.optim.Optimizer) -> None:
    """Inverse of save_optimizer (tensors land on the parameters' devices through load_state_dict)."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = t
    for name, v in json.loads(meta["scalars"]).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run (trainer.json is written last), oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step_*") if (p / "trainer.json").is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------ distributed


@dataclass
class Dist:
    """Process-group facts; world 1 without torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, Gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank=rank, world=world, local_rank=local, device=dev)


class StepBatches:
    """Batch sampler: step s on rank r takes indices ((s·world + r)·batch + i), from `start` on, forever."""

    def __init__(self, start: int, batch: int, rank: int, world: int) -> None:
        self.start, self.batch, self.rank, self.world = start, batch, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start
        while True:
            base = (step * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))
            step += 1


# ------------------------------------------------------------------------------------------ trainer


def _seeded(seed: int, rank: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose state is a pure function of (seed, rank, step): nothing to save for resuming."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank) * 1_000_000_007 + step)
    return g


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """nanoGPT's split: decay the weight matrices, not biases, norms, embeddings or modulation tables."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and name.endswith("weight") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class Trainer:
    """Builds model, EMA, optimizer and data from a TrainConfig; `train()` runs to cfg.steps."""

    def __init__(self, cfg: TrainConfig, dataset: ClipDataset | None = None,
                 model_cfg: DiTConfig | None = None) -> None:
        """dataset defaults to cfg.data; model_cfg (e.g. a smaller net for tests) defaults to cfg.preset."""
        self.cfg = cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.dist = setup_distributed(cfg.device)
        self.device = self.dist.device
        if dataset is None:
            if not cfg.data:
                raise ValueError("TrainConfig.data is empty: give at least one --data path")
            dataset = ClipDataset.from_paths(list(cfg.data), cfg.data_config())
        self.dataset = dataset
        self.model_cfg = model_cfg if model_cfg is not None else preset(cfg.preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.model = DiT(self.model_cfg).to(self.device)  # fp32 master weights; autocast does bf16
        self.model.grad_checkpointing = cfg.grad_checkpointing
        self.ema = EMA(self.model, cfg.ema_decay)
        self.opt = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                                     fused=self.device.type == "cuda" or None)
        self.step = 0
        self.layout = self.model.token_layout(cfg.frames, cfg.height, cfg.width)
        self.flow = cfg.flow_config()
        net: nn.Module = self.model
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.net = torch.compile(net) if cfg.compile else net
        self.out = Path(cfg.out)

    # -- one step -------------------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32 on the CPU: exact resumes, and bf16 gains little there

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimizer step on a collated batch; returns the loss stats (this rank's)."""
        cfg, layout, dev = self.cfg, self.layout, self.device
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        gen = _seeded(cfg.seed, self.dist.rank, self.step)
        x0 = layout.patchify({m: batch[m] for m in MODALITIES})  # (B, L, P)
        mask = training_masks(layout, batch, cfg.mask_weights, gen)
        sigma = training_sigma(mask.task_sigma, self.flow, gen)  # (B, L)
        noise = torch.randn(x0.shape, generator=_seeded(cfg.seed, self.dist.rank, self.step, dev), device=dev)
        lr = lr_at(self.step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        with self._autocast():
            loss, stats = flow_loss(self.net, x0, sigma, layout, mask.available, self.flow, noise=noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.opt.step()
        self.ema.update(self.model)
        self.step += 1
        stats["lr"] = lr
        return stats

    def loader(self) -> DataLoader:
        """Batches from the current step on (StepBatches makes the stream resumable)."""
        cfg = self.cfg
        sampler = StepBatches(self.step, cfg.batch, self.dist.rank, self.dist.world)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
                          pin_memory=self.device.type == "cuda", persistent_workers=cfg.num_workers > 0)

    # -- the loop --------------------------------------------------------------------------------

    def train(self, until: int | None = None) -> list[dict[str, float]]:
        """Run steps until `until` (default cfg.steps); logs, saves every save_every and at the end.

        Returns the per-step stats of this call (for tests and callers that want the curve)."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        history: list[dict[str, float]] = []
        if self.step >= until:
            return history
        log = CsvLog(self.out / "log.csv", resume_step=self.step) if self.dist.main else None
        bar = None
        if self.dist.main and not cfg.quiet:
            from tqdm import tqdm

            bar = tqdm(total=until, initial=self.step, desc="train", dynamic_ncols=True)
        window: list[dict[str, float]] = []
        start, t_log = time.perf_counter(), time.perf_counter()
        for batch in self.loader():
            stats = self.train_step(batch)
            history.append(stats)
            window.append(stats)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{stats['lr']:.2e}")
            if self.step % cfg.log_every == 0 or self.step == until:
                now = time.perf_counter()
                row = self._reduce(window)
                row.update(step=self.step, steps_per_s=len(window) / max(now - t_log, 1e-9),
                           elapsed_s=now - start)
                if log is not None:
                    log.write(row)
                    plot_curves(read_log(log.path), self.out / "loss.png", title=f"{cfg.preset} training loss")
                window, t_log = [], now
            if self.step % cfg.save_every == 0 or self.step == until:
                self.save()
            if self.step >= until:
                break
        if bar is not None:
            bar.close()
        return history

    def _reduce(self, window: list[dict[str, float]]) -> dict[str, float]:
        """Mean of each logged stat over the window (and over ranks); a modality's loss averages only
        the steps that scored it (flow_loss reports 0 for a modality with no scored token)."""
        keys = ("loss", "loss_rgb", "loss_depth", "loss_rays", "grad_norm")
        sums = torch.tensor([[sum(s[k] for s in window), sum(1.0 for s in window if s[k] > 0)] for k in keys],
                            dtype=torch.float64)  # (5, 2)
        if self.dist.world > 1:
            sums = sums.to(self.device)
            dist.all_reduce(sums)
            sums = sums.cpu()
        row = {k: float(s / n) if n > 0 else math.nan for k, (s, n) in zip(keys, sums.tolist())}
        row["lr"] = window[-1]["lr"]
        return row

    # -- checkpoints -----------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Rank 0 writes checkpoints/step_N/{model,ema,optimizer}.safetensors + trainer.json (last)."""
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        if self.dist.main:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            meta = model_metadata(self.cfg, self.step)
            save_checkpoint(tmp / "model.safetensors", self.model, self.model_cfg, meta)
            save_checkpoint(tmp / "ema.safetensors", self.ema.module, self.model_cfg, {**meta, "ema": True})
            save_optimizer(tmp / "optimizer.safetensors", self.opt)
            state = {"step": self.step, "ema_updates": self.ema.updates, "config": asdict(self.cfg)}
            (tmp / "trainer.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            for old in checkpoints(self.out)[: -self.cfg.keep]:
                shutil.rmtree(old, ignore_errors=True)
        if self.dist.world > 1:
            dist.barrier()
        return path

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load model, EMA, optimizer and step from a checkpoint folder (default: the run's latest)."""
        ckpt = Path(path) if path is not None else latest_checkpoint(self.out)
        if ckpt is None or not (ckpt / "trainer.json").is_file():
            raise FileNotFoundError(f"no complete checkpoint to resume from in {path or self.out}")
        state = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
        saved = state["config"]
        if saved.get("preset") != self.cfg.preset:
            raise ValueError(f"resume: checkpoint preset {saved.get('preset')!r} != config preset {self.cfg.preset!r}")
        with torch.no_grad():  # copy into the live tensors: the optimizer keeps its parameter references
            for target, file in ((self.model, "model"), (self.ema.module, "ema")):
                loaded = read_safetensors(ckpt / f"{file}.safetensors")
                target.load_state_dict({k: v.to(self.device) for k, v in loaded.items()}, strict=True)
        load_optimizer(ckpt / "optimizer.safetensors", self.opt)
        self.step, self.ema.updates = int(state["step"]), int(state["ema_updates"])
        return self.step


# ------------------------------------------------------------------------------------------ shipping


def export_default(run_dir: str | os.PathLike, path: str | os.PathLike, storage_dtype: str = "bfloat16",
                   checkpoint: str | os.PathLike | None = None) -> Path:
    """Write the EMA weights of a run's latest (or the given) checkpoint as the shipped model.

    Stored in `storage_dtype` (bf16 halves the file: tiny is ~30 MB) with the metadata the server reads
    (window, area, flow); load_checkpoint casts back to the config's dtype.
    """
    ckpt = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"export: no checkpoint in {run_dir}")
    model, model_cfg, meta = load_checkpoint(ckpt / "ema.safetensors")
    extra = dict(meta["extra"])
    for key in ("window", "area", "flow"):
        if key not in extra:
            raise ValueError(f"export: {ckpt / 'ema.safetensors'} lacks metadata key {key!r}")
    extra.update(ema=True, source=str(ckpt))
    return save_checkpoint(path, model, model_cfg, extra, storage_dtype=storage_dtype)
