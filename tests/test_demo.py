"""`parallax demo`: option checks (fast) and one tiny end-to-end run through the real CLI (slow).

The end-to-end run renders 6 Cycles frames at 64x48, starts a real `parallax serve` through the
add-on, runs novel views and camera recovery at 2 steps, and is checked against independent oracles:
the contact sheet's layout formula and its ground-truth row against the rendered PNGs; the saved
.blend reopened in a fresh bpy process, whose camera keys and matrix_world give the ATE again by a
different route (centres straight from matrix_world, not the add-on's exporter).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import cli, demo
from backend.geometry import align

ROOT = Path(__file__).resolve().parent.parent
F, W, H = 6, 64, 48


# ----------------------------------------------------------------------------------------------
# fast: options


@pytest.mark.parametrize(("field", "value"), [("frames", 2), ("width", 8), ("steps", 0), ("samples", True),
                                              ("scene", "moon"), ("device", "tpu"), ("timeout", 0.0)])
def test_bad_option_names_its_field(field, value):
    with pytest.raises(ValueError, match=field):
        demo.DemoConfig(**{field: value})


def test_missing_checkpoint_is_a_clear_error_before_blender_starts(tmp_path, capsys):
    code = demo.main(["--out", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "none.safetensors")])
    assert code == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # failed before any work


def test_script_args_carry_every_option(tmp_path):
    cfg = demo.DemoConfig(out=str(tmp_path), frames=5, width=40, height=32, samples=3, steps=4, seed=7,
                          scene="room", device="cpu", timeout=12.5)
    args = cfg.script_args()
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs == {"--out": str(tmp_path.resolve()), "--frames": "5", "--width": "40", "--height": "32",
                     "--samples": "3", "--steps": "4", "--seed": "7", "--scene": "room", "--device": "cpu",
                     "--timeout": "12.5"}


def test_model_line_says_when_the_weights_are_random():
    assert "UNTRAINED" in demo.model_line({"model": "tiny", "trained": False, "device": "cpu"}, None)
    line = demo.model_line({"model": "parallax-tiny.safetensors", "trained": True, "device": "cpu"}, None)
    assert "UNTRAINED" not in line and "embedded default" in line


# ----------------------------------------------------------------------------------------------
# slow: the whole demo

BLEND_CHECK = """
import json, sys
import bpy
from bpy_extras import anim_utils
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene, F = bpy.context.scene, int(sys.argv[2])
out = {"scene_camera": scene.camera.name, "cameras": {}}
for name in ("True Camera", "Parallax Camera"):
    o = bpy.data.objects[name]
    bag = anim_utils.action_get_channelbag_for_slot(o.animation_data.action, o.animation_data.action_slot)
    keys = {f"{fc.data_path}[{fc.array_index}]": len(fc.keyframe_points) for fc in bag.fcurves}
    mats = []
    for f in range(1, F + 1):
        scene.frame_set(f)
        mats.append([list(r) for r in o.matrix_world])
    out["cameras"][name] = {"keys": keys, "rotation_mode": o.rotation_mode, "matrix_world": mats}
meshes = [o for o in scene.objects if o.type == "MESH" and o.name.startswith("Parallax")]
out["meshes"] = {o.name: len(o.data.vertices) for o in meshes}
print("RESULT" + json.dumps(out))
"""


def _read_png(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return img[:, :, ::-1]  # BGR → RGB


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    entry = ["-m", "backend.cli", "demo"] if "demo" in cli.COMMANDS else ["-m", "backend.demo"]
    cmd = [sys.executable, *entry, "--out", str(out), "--frames", str(F), "--width", str(W), "--height", str(H),
           "--steps", "2", "--samples", "4", "--device", "cpu", "--timeout", "300"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout



@pytest.mark.slow
@pytest.mark.blender
def test_demo_reports_a_finite_ate_and_the_model(demo_run):
    out, stdout = demo_run
    result = json.loads((out / "demo.json").read_text())
    m = result["metrics"]
    assert all(math.isfinite(m[k]) for k in ("ate_rmse", "ate_static", "rpe_trans_rmse", "rpe_rot_rmse_deg"))
    assert 0 <= m["ate_rmse"] <= m["ate_max"] and m["path_length"] > 0
    assert result["frames"] == F and isinstance(result["model"]["trained"], bool)
    assert "ATE (Sim(3))" in stdout and f"{m['ate_rmse']:.4f}" in stdout
    assert ("UNTRAINED" in stdout) == (not result["model"]["trained"])
    assert len(sorted((Path(result["jobs"]["nvs"]) / "frames").glob("*.png"))) == F


@pytest.mark.slow
@pytest.mark.blender
def test_contact_sheet_is_views_over_ground_truth(demo_run):
    out, _ = demo_run
    sheet = _read_png(out / "contact_sheet.png")
    pad = 2
    assert sheet.shape == (2 * (H + pad) + pad, F * (W + pad) + pad, 3)
    views = sorted((Path(json.loads((out / "demo.json").read_text())["jobs"]["nvs"]) / "frames").glob("*.png"))
    for i, (view, truth) in enumerate(zip(views, sorted((out / "render").glob("*.png")))):
        x = pad + i * (W + pad)
        np.testing.assert_array_equal(sheet[pad:pad + H, x:x + W], _read_png(view))
        np.testing.assert_array_equal(sheet[2 * pad + H:2 * pad + 2 * H, x:x + W], _read_png(truth))


@pytest.mark.slow
@pytest.mark.blender
def test_saved_blend_holds_both_cameras_keyed_and_the_same_ate(demo_run, tmp_path):
    out, _ = demo_run
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", BLEND_CHECK, str(out / "demo.blend"), str(F)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[6:])
    assert found["scene_camera"] == "Parallax Camera"
    for cam in found["cameras"].values():
        assert cam["rotation_mode"] == "QUATERNION"
        for path in ("location", "rotation_quaternion"):
            assert all(n == F for k, n in cam["keys"].items() if k.startswith(path))
            assert sum(k.startswith(path) for k in cam["keys"]) == (3 if path == "location" else 4)
    assert found["meshes"].get("Parallax mesh", 0) > 0
    # Sim(3) ATE sees only camera centres, so matrix_world (Blender axes) must give demo.json's number.
    true = np.array(found["cameras"]["True Camera"]["matrix_world"])  # (F, 4, 4)
    rec = np.array(found["cameras"]["Parallax Camera"]["matrix_world"])  # (F, 4, 4)
    expected = json.loads((out / "demo.json").read_text())["metrics"]["ate_rmse"]
    assert align.ate(rec, true)["rmse"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.blender
def test_a_backend_that_cannot_start_fails_the_demo_clearly_and_leaves_no_process(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")  # exists (passes the option check), but the backend cannot load it
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "backend.demo", "--out", str(out), "--frames", "3", "--width", "32",
           "--height", "24", "--samples", "1", "--steps", "1", "--device", "cpu", "--checkpoint", str(bad),
           "--timeout", "120"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1
    assert "local backend exited" in proc.stderr and "failed" in proc.stderr
    assert not (out / "demo.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(_backend_pid((out / "blender.log").read_text()), 0)  # gone, not left running


def _backend_pid(log: str) -> int:
    line = next(ln for ln in log.splitlines() if "backend starting (pid" in ln)
    return int(line.split("(pid ")[1].split(")")[0])


@pytest.mark.slow
@pytest.mark.blender
def test_a_job_that_times_out_still_stops_the_busy_backend(tmp_path):
    # 200 steps cannot finish within a 1 s job timeout: the demo gives up while the backend is busy
    # with the job, and must still stop that live process on its way out.
    cmd = [sys.executable, str(ROOT / "scripts" / "demo_blender.py"), "--out", str(tmp_path), "--frames", "3",
           "--width", "32", "--height", "24", "--samples", "1", "--steps", "200", "--device", "cpu",
           "--job-timeout", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), BLENDER_USER_RESOURCES=str(tmp_path / "bpy"))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "nvs job still" in proc.stderr
    assert "backend up" in proc.stdout  # it failed with the backend running, not before
    with pytest.raises(ProcessLookupError):
        os.kill(_backend_pid(proc.stdout), 0)
