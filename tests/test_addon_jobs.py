"""Jobs through the add-on's operators, worker and pump against a real backend *server* process.

The server is the real one (backend.server.server.Server: ROUTER socket, job queue, job folders) in
its own process; only its runners are small scripted functions with known answers, because the
model pipelines are tested elsewhere (test_addon_e2e.py runs the real `parallax serve`). Killing that
process mid-job checks that Blender stays responsive and reports a clear error.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPO = "pxtest_jobs"
NAME = f"bl_ext.{REPO}.parallax"

# A server whose runners return known answers: nvs paints frame i with value 10·i and returns a
# one-triangle mesh; cameras returns the cameras saved in TRUTH; nvs with steps=500 is slow.
SERVER = r"""
import sys, time, numpy as np
from pathlib import Path
from backend.server.server import Server, ServerConfig
truth = np.load(sys.argv[2])
def nvs(arrays, params, progress):
    if params["steps"] == 500:
        for i in range(400):
            progress(i / 400, "slow"); time.sleep(0.05)
    F, H, W = len(arrays["K"]), params["height"], params["width"]
    progress(0.5, "painting")
    images = (np.arange(F, dtype=np.uint8)[:, None, None, None] * 10 + np.zeros((F, H, W, 3), np.uint8))
    out = {"images": images, "depth": np.ones((F, H, W), np.float32), "K": arrays["K"], "c2w": arrays["c2w"]}
    if params["mesh"]:
        out |= {"vertices": np.eye(3, dtype=np.float32), "faces": np.array([[0, 1, 2]], np.int32),
                "colors": np.full((3, 3), 200, np.uint8)}
    return out, {"frames": F}
def cameras(arrays, params, progress):
    progress(0.5, "solving")
    return {"K": truth["K"], "c2w": truth["c2w"], "points": truth["c2w"][:, :3, 3].astype(np.float32),
            "colors": np.full((len(truth["K"]), 3), 255, np.uint8)}, {}
def edit(arrays, params, progress):
    video = arrays["video"].copy(); video[:, :4] = arrays["edited"][:4]
    return {"images": video}, {}
server = Server(ServerConfig(bind="tcp://127.0.0.1:0", job_root=Path(sys.argv[1])),
                {"nvs": nvs, "cameras": cameras, "edit": edit})
print(server.endpoint, flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("parallax_build_extension_j", ROOT / "scripts" / "build_extension.py")
    be = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(be)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mod = be.load_in_blender(be.assemble(tmp_path_factory.mktemp("ext")), REPO)
    yield mod
    addon_utils.disable(NAME, default_set=True)
    repos = bpy.context.preferences.extensions.repos
    repos.remove(next(r for r in repos if r.module == REPO))


@pytest.fixture(scope="module")
def truth():
    """Three cameras of a 32x24 clip (OpenCV axes), the answer the cameras runner gives."""
    K = np.array([[[30.0 + i, 0, 16.5], [0, 30.0 + i, 12.0], [0, 0, 1]] for i in range(3)])
    c2w = np.stack([np.eye(4)] * 3)
    c2w[:, :3, 3] = [[0, 0, 0], [0.5, 0, 0], [1.0, 0.1, 0]]
    return K, c2w


@pytest.fixture()
def server(tmp_path, truth):
    np.savez(tmp_path / "truth.npz", K=truth[0], c2w=truth[1])
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "jobs"), str(tmp_path / "truth.npz")],
                            stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    endpoint = proc.stdout.readline().strip()
    assert endpoint.startswith("tcp://"), "the test server did not start"
    prefs = bpy.context.preferences.addons[NAME].preferences
    prefs.address, prefs.timeout = endpoint, 1.0
    prefs.output_policy, prefs.output_dir = "FOLDER", str(tmp_path / "out")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)


def pump():
    return sys.modules[f"{NAME}.pump"]


def _camera_scene(frames: int = 3):
    scene = bpy.context.scene
    for o in list(scene.objects):
        bpy.data.objects.remove(o)
    cam = bpy.data.objects.new("shot", bpy.data.cameras.new("shot"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 32, 24, 100
    scene.frame_start, scene.frame_end = 1, frames
    for f in range(1, frames + 1):
        cam.location = (0.2 * f, 0, 5)
        cam.keyframe_insert("location", frame=f)
    scene.parallax.nvs_image = bpy.data.images.new("src", 32, 24)
    return scene, cam


def _wait(job, states, timeout=20.0) -> None:
    assert pump().run_until(lambda: job.state in states, timeout), f"job stuck in {job.state}: {job.message}"


def test_connect_reports_backend_info(addon, server):
    props = bpy.context.scene.parallax
    bpy.ops.parallax.connect()
    assert pump().run_until(lambda: props.connected, 5.0), props.last_error
    assert props.last_error == ""


def test_novel_views_write_frames_background_strip_and_mesh(addon, server):
    scene, cam = _camera_scene()
    scene.parallax.nvs_mesh = True
    assert bpy.ops.parallax.novel_views() == {"FINISHED"}
    job = scene.parallax.jobs[-1]
    _wait(job, ("done", "failed"))
    assert job.state == "done", job.message
    out = Path(job.out_dir)
    frames = sorted((out / "frames").glob("*.png"))
    assert [p.name for p in frames] == ["0001.png", "0002.png", "0003.png"]
    second = sys.modules[f"{NAME}.scene_io"].load_image_file(frames[1])
    assert second.shape == (24, 32, 3) and np.all(second == 10)  # frame index 1 painted 10 by the runner
    assert (out / "transforms.json").is_file() and (out / "mesh.ply").is_file()
    assert cam.data.background_images[0].image.source == "SEQUENCE"
    se = scene.sequence_editor
    strips = list(se.strips if hasattr(se, "strips") else se.sequences)
    assert len(strips[-1].elements) == 3 and strips[-1].frame_final_duration == 3
    mesh = next(o for o in scene.objects if o.name.startswith("Parallax mesh"))
    assert len(mesh.data.vertices) == 3 and len(mesh.data.polygons) == 1


def test_recover_cameras_keys_a_camera(addon, server, truth, tmp_path):
    images = sys.modules[f"{NAME}.images"]
    images.write_sequence(tmp_path / "clip", np.zeros((3, 24, 32, 3), np.uint8), start=1)
    scene = bpy.context.scene
    scene.parallax.cam_clip, scene.parallax.cam_folder = None, str(tmp_path / "clip")
    assert bpy.ops.parallax.recover_cameras() == {"FINISHED"}
    job = scene.parallax.jobs[-1]
    _wait(job, ("done", "failed"))
    assert job.state == "done", job.message
    cam = scene.camera
    assert cam.name.startswith("Parallax Camera") and (scene.frame_start, scene.frame_end) == (1, 3)
    K, c2w, W, H = sys.modules[f"{NAME}.scene_io"].read_camera_track(scene, cam, [1, 2, 3])
    assert (W, H) == (32, 24)
    np.testing.assert_allclose(K, truth[0], atol=1e-4)
    np.testing.assert_allclose(c2w, truth[1], atol=1e-6)
    assert len(next(o for o in scene.objects if o.name.startswith("Parallax points")).data.vertices) == 3


def test_propagate_edit_adds_a_strip(addon, server, tmp_path):
    images = sys.modules[f"{NAME}.images"]
    images.write_sequence(tmp_path / "clip", np.zeros((2, 24, 32, 3), np.uint8), start=1)
    edited = images.write_png(tmp_path / "edited.png", np.full((24, 32, 3), 77, np.uint8))
    scene = bpy.context.scene
    p = scene.parallax
    p.edit_clip, p.edit_folder, p.edit_image, p.edit_image_path = None, str(tmp_path / "clip"), None, str(edited)
    assert bpy.ops.parallax.propagate_edit() == {"FINISHED"}
    job = p.jobs[-1]
    _wait(job, ("done", "failed"))
    assert job.state == "done", job.message
    first = sys.modules[f"{NAME}.scene_io"].load_image_file(Path(job.out_dir) / "frames" / "0001.png")
    assert np.all(first[:4] == 77) and np.all(first[4:] == 0)


def test_cancel_and_killed_backend_give_clear_errors(addon, server):
    scene, _ = _camera_scene()
    scene.parallax.steps = 500  # the slow runner
    try:
        bpy.ops.parallax.novel_views()
        job = scene.parallax.jobs[-1]
        _wait(job, ("running",))
        bpy.ops.parallax.cancel_job(tag=job.tag)
        _wait(job, ("cancelled", "failed"))
        assert job.state == "cancelled"
        bpy.ops.parallax.novel_views()
        job = scene.parallax.jobs[-1]
        _wait(job, ("running",))
        os.kill(server.pid, signal.SIGKILL)  # the backend dies mid-job
        t0 = time.monotonic()
        _wait(job, ("failed",), timeout=10.0)  # every pump call returned quickly meanwhile
        assert time.monotonic() - t0 < 8.0
        assert "No answer from the Parallax backend" in job.message
    finally:
        scene.parallax.steps = 20
