"""`parallax demo`: the whole thing, headless, on the embedded default model.

Builds a Cycles scene with an animated camera, starts a real backend through the Blender add-on,
runs novel views and camera recovery with the add-on's operators, and writes OUT/demo.blend,
OUT/contact_sheet.png (novel views above the Cycles ground truth) and OUT/demo.json. It prints the
round-trip score of issue 6: ATE of the recovered cameras against the true camera after a Umeyama
Sim(3) fit (Sturm et al. 2012; backend/geometry/align.py).

The Blender part is scripts/demo_blender.py, run in a child interpreter so bpy's global state (and
its render chatter, kept in OUT/blender.log) stays out of this process; this module only checks the
options, runs it, and reports. It imports neither bpy nor torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "demo_blender.py"
LAYOUTS = ("outdoor", "room")  # procedural layouts of backend.data.synth_scene
DEVICES = ("auto", "cpu", "cuda")  # `parallax serve --device`
TAIL_LINES = 30  # log lines shown when the Blender part fails


@dataclass
class DemoConfig:
    """One demo run. The defaults keep it to about 2–3 minutes on a 2-core CPU."""

    out: str = "out/demo"  # output folder
    frames: int = 16  # frames in the animated shot
    width: int = 128  # render width in pixels
    height: int = 96  # render height in pixels
    samples: int = 8  # Cycles samples per pixel
    steps: int = 8  # sampling steps of each job
    seed: int = 0  # scene, camera path and sampling seed
    scene: str = "outdoor"  # procedural layout, one of LAYOUTS
    device: str = "auto"  # backend device, one of DEVICES
    checkpoint: str | None = None  # model checkpoint; None = the embedded default (random tiny if absent)
    timeout: float = 600.0  # seconds to wait for the backend to answer and for each job

    def __post_init__(self) -> None:
        # frames >= 3: Sim(3) alignment needs three camera centres; sizes: patchable and small.
        for name, lo, hi in (("frames", 3, 128), ("width", 16, 1024), ("height", 16, 1024),
                             ("samples", 1, 4096), ("steps", 1, 500), ("seed", 0, 2**31 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"demo {name} must be an int in [{lo}, {hi}], got {v!r}")
        if self.scene not in LAYOUTS:
            raise ValueError(f"demo scene must be one of {LAYOUTS}, got {self.scene!r}")
        if self.device not in DEVICES:
            raise ValueError(f"demo device must be one of {DEVICES}, got {self.device!r}")
        if not self.timeout > 0:
            raise ValueError(f"demo timeout must be > 0 seconds, got {self.timeout!r}")
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"demo checkpoint {self.checkpoint} not found")

    def script_args(self) -> list[str]:
        """The command line of scripts/demo_blender.py for this config."""
        args = ["--out", str(Path(self.out).resolve())]
        for name in ("frames", "width", "height", "samples", "steps", "seed", "scene", "device", "timeout"):
            args += [f"--{name}", str(getattr(self, name))]
        if self.checkpoint is not None:
            args += ["--checkpoint", str(Path(self.checkpoint).resolve())]
        return args


def run_blender(cfg: DemoConfig, log_path: Path) -> int:
    """Run scripts/demo_blender.py; echo its `demo:` lines, keep everything in `log_path`; returns its code."""
    with tempfile.TemporaryDirectory(prefix="parallax-demo-bpy-") as user:
        env = dict(os.environ, BLENDER_USER_RESOURCES=user, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, str(SCRIPT), *cfg.script_args()]
        with open(log_path, "w") as log, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                           stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                log.write(line)
                if line.startswith("demo:"):
                    print(line.rstrip(), flush=True)
        return proc.returncode


def model_line(model: dict, checkpoint: str | None) -> str:
    """Which model answered: the backend's own hello (`model`, `trained`, `device`)."""
    name, device = model.get("model"), model.get("device")
    if model.get("trained"):
        source = "given checkpoint" if checkpoint else "embedded default"
        return f"model {name} ({source}) on {device}"
    return (f"model {name}: UNTRAINED random weights on {device} (no embedded checkpoint "
            "backend/assets/parallax-tiny.safetensors yet): the pipeline runs end to end, the pictures "
            "and cameras are not meaningful")


def summary(result: dict, checkpoint: str | None = None) -> str:
    """The report printed at the end of a run, from demo.json's contents."""
    m, files = result["metrics"], result["files"]
    return "\n".join([
        f"parallax demo: {model_line(result['model'], checkpoint)}",
        f"  shot         {result['frames']} frames {result['width']}x{result['height']}, Cycles "
        f"{result['cycles_samples']} spp, {result['scene']} scene; jobs at {result['steps']} steps",
        f"  novel views  {result['jobs']['nvs']}",
        f"  cameras      '{result['recovered_camera']}' keyed over {result['frames']} frames "
        f"({result['jobs']['cameras']})",
        f"  ATE (Sim(3)) rmse {m['ate_rmse']:.4f}  ({m['ate_over_path']:.1%} of the {m['path_length']:.3f} path; "
        f"a camera that never moves: {m['ate_static']:.4f})",
        f"  RPE          {m['rpe_trans_rmse']:.4f} per frame, {m['rpe_rot_rmse_deg']:.2f}° per frame; "
        f"focal error {m['focal_error_median']:.1%} (median)",
        f"  files        {files['blend']}, {files['contact_sheet']}, {Path(files['blend']).with_name('demo.json')}",
    ])  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--out", default=d.out, help="output folder (demo.blend, contact_sheet.png, demo.json)")
    parser.add_argument("--frames", type=int, default=d.frames, help="frames in the animated shot")
    parser.add_argument("--width", type=int, default=d.width, help="render width")
    parser.add_argument("--height", type=int, default=d.height, help="render height")
    parser.add_argument("--samples", type=int, default=d.samples, help="Cycles samples per pixel")
    parser.add_argument("--steps", type=int, default=d.steps, help="sampling steps of each job")
    parser.add_argument("--seed", type=int, default=d.seed, help="scene, camera and sampling seed")
    parser.add_argument("--scene", default=d.scene, choices=LAYOUTS, help="procedural scene layout")
    parser.add_argument("--device", default=d.device, choices=DEVICES, help="backend device")
    parser.add_argument("--checkpoint", default=None, help="model checkpoint (default: the embedded model)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds to wait for the backend / a job")


def run(args: argparse.Namespace) -> int:
    cfg = DemoConfig(**{k: getattr(args, k) for k in DemoConfig.__dataclass_fields__})
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    result_path, log_path = out / "demo.json", out / "blender.log"
    result_path.unlink(missing_ok=True)  # a failed run must not show an older run's numbers
    code = run_blender(cfg, log_path)
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
        print("\n".join(tail), file=sys.stderr)
        print(f"parallax demo: failed (exit code {code}); full log {log_path}, backend log {out / 'backend.log'}",
              file=sys.stderr)
        return 1
    print(summary(json.loads(result_path.read_text()), cfg.checkpoint), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.demo` (the same as `parallax demo`)."""
    parser = argparse.ArgumentParser(prog="parallax demo", description=__doc__.splitlines()[0])
    configure(parser)
    try:
        return run(parser.parse_args(argv))
    except (ValueError, FileNotFoundError) as exc:
        print(f"parallax demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
