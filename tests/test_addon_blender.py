"""The Blender extension inside the real bpy wheel: built, enabled as an extension, checked against Blender.

Oracles: Blender's own projection (`world_to_camera_view`) for exported cameras, the transforms.json
input for imported cameras (exported back through Blender's float32 storage), Blender's PNG reader for
written frames, and mesh data read back with foreach_get.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")
import addon_utils  # noqa: E402
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Vector  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REPO = "pxtest_blender"
NAME = f"bl_ext.{REPO}.parallax"


def _build_script():
    spec = importlib.util.spec_from_file_location("parallax_build_extension", ROOT / "scripts" / "build_extension.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    """The built extension, enabled in bpy under its real package name; disabled afterwards."""
    be = _build_script()
    ext = be.assemble(tmp_path_factory.mktemp("ext"))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    mod = be.load_in_blender(ext, REPO)
    yield mod
    addon_utils.disable(NAME, default_set=True)
    prefs = bpy.context.preferences.extensions
    prefs.repos.remove(next(r for r in prefs.repos if r.module == REPO))


def sub(name: str):
    return sys.modules[f"{NAME}.{name}"]


def test_registers_and_unregisters_twice(addon):
    assert addon.__name__ == NAME and addon.__package__ == NAME
    for _ in range(2):
        assert hasattr(bpy.types.Scene, "parallax")
        assert bpy.context.scene.parallax.steps == 20
        assert bpy.context.preferences.addons[NAME].preferences.address == "tcp://127.0.0.1:5555"
        assert hasattr(bpy.types, "PARALLAX_PT_jobs")
        assert bpy.ops.parallax.novel_views.idname() == "PARALLAX_OT_novel_views"
        assert _our_load_handlers() == 1
        addon_utils.disable(NAME, default_set=True, handle_error=_raise)
        assert _our_load_handlers() == 0
        assert not hasattr(bpy.types.Scene, "parallax")
        assert not hasattr(bpy.types, "PARALLAX_PT_jobs")
        addon_utils.enable(NAME, default_set=True, handle_error=_raise)
    assert sys.modules[NAME].pump.bpy.app.timers.is_registered(sys.modules[NAME].pump.pump)


def _raise(exc):
    raise exc


def _our_load_handlers() -> int:
    return sum(getattr(h, "__module__", "") == f"{NAME}.pump" for h in bpy.app.handlers.load_post)


# ----------------------------------------------------------------------------- cameras out


def _animated_camera(scene, fit: str, aspect: tuple[float, float], rng) -> object:
    cam = bpy.data.cameras.new(f"cam-{fit}")
    obj = bpy.data.objects.new(f"cam-{fit}", cam)
    scene.collection.objects.link(obj)
    scene.camera = obj
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 96, 64, 50
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = aspect
    cam.sensor_fit, cam.sensor_width, cam.sensor_height = fit, 32.0, 20.0
    for frame in (1, 5):  # keys at 1 and 5: frame 3 is interpolated by Blender
        cam.lens, cam.shift_x, cam.shift_y = rng.uniform(20, 80), rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)
        obj.location, obj.rotation_euler = rng.normal(size=3) * 3, rng.uniform(-np.pi, np.pi, 3)
        for target, path in ((cam, "lens"), (cam, "shift_x"), (cam, "shift_y"), (obj, "location"),
                             (obj, "rotation_euler")):
            target.keyframe_insert(path, frame=frame)
    return obj


@pytest.mark.parametrize("fit", ["AUTO", "HORIZONTAL", "VERTICAL"])
@pytest.mark.parametrize("aspect", [(1.0, 1.0), (2.0, 1.0), (1.0, 1.5)])
def test_exported_cameras_match_blender_projection(addon, fit, aspect, rng):
    scene = bpy.context.scene
    obj = _animated_camera(scene, fit, aspect, rng)
    frames = [1, 3, 5]
    K, c2w, W, H = sub("scene_io").read_camera_track(scene, obj, frames)
    assert (W, H) == (48, 32) and K.shape == (3, 3, 3) and c2w.shape == (3, 4, 4)
    assert not np.allclose(K[0], K[2])  # the lens and shift animation reached the export
    for i, f in enumerate(frames):
        scene.frame_set(f)
        uv = rng.uniform(-0.2, 1.2, (16, 2)) * [W, H]
        cam_pts = np.concatenate([(uv - K[i, :2, 2]) / np.diag(K[i])[:2], np.ones((16, 1))], 1)
        cam_pts *= rng.uniform(0.5, 20, (16, 1))
        world = (cam_pts @ c2w[i, :3, :3].T + c2w[i, :3, 3]).astype(np.float32)
        ndc = np.array([tuple(world_to_camera_view(scene, obj, Vector(x))) for x in world])
        local = (world - c2w[i, :3, 3]) @ c2w[i, :3, :3]
        ours = (local @ K[i].T)[:, :2] / local[:, 2:]
        theirs = np.stack([ndc[:, 0] * W, (1 - ndc[:, 1]) * H], -1)
        scale = max(W, H, K[i, 0, 0], K[i, 1, 1])
        np.testing.assert_allclose(ours, theirs, atol=3e-6 * scale * 10)
        np.testing.assert_allclose(ndc[:, 2], local[:, 2], rtol=1e-5)
    bpy.data.objects.remove(obj)


# ----------------------------------------------------------------------------- cameras in


def _transforms(rng, n: int = 6) -> dict:
    """A shot whose rotation crosses the quaternion hemisphere; per-frame focal length and principal point."""
    frames = []
    for i in range(n):
        angle = 0.9 * np.pi * i / (n - 1) + 0.5  # past π/2 the naive (w ≥ 0) quaternion flips sign
        axis = np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2])
        Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        R = np.eye(3) + np.sin(angle * 2) * Kx + (1 - np.cos(angle * 2)) * Kx @ Kx
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, rng.normal(size=3) * 2
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": T.tolist(),
                       "fl_x": 70.0 + 3 * i, "fl_y": 70.0 + 3 * i, "cx": 40.0 + i, "cy": 29.0 - 0.5 * i})
    return {"w": 80, "h": 60, "frames": frames}


def test_imported_cameras_reproduce_transforms(addon, rng):
    cio, sio = sub("camera_io"), sub("scene_io")
    d = _transforms(rng)
    K, c2w, W, H, _ = cio.cameras_from_transforms(d)
    scene = bpy.context.scene
    obj = sio.create_camera(scene, "imported", K, c2w, W, H, frame_start=10)
    frames = list(range(10, 10 + len(K)))
    K2, c2w2, W2, H2 = sio.read_camera_track(scene, obj, frames)
    assert (W2, H2) == (W, H)
    np.testing.assert_allclose(K2, K, rtol=1e-6, atol=1e-4)  # float32 lens/shift on a ~70 px focal
    np.testing.assert_allclose(c2w2, c2w, atol=2e-6 * 4)  # float32 rotations and locations
    back = json.loads(json.dumps(cio.transforms_dict(K2, c2w2, W2, H2, [f["file_path"] for f in d["frames"]])))
    for a, b in zip(back["frames"], d["frames"]):
        np.testing.assert_allclose(a["transform_matrix"], b["transform_matrix"], atol=1e-5)
    q = np.array([[obj.animation_data is not None and _fcurve_value(obj, "rotation_quaternion", j, f)
                   for j in range(4)] for f in frames])
    assert np.all(np.einsum("ni,ni->n", q[1:], q[:-1]) > 0)  # keys never take the long way round
    assert np.any(q[:, 0] < 0)  # the shot did cross the hemisphere: continuity was needed
    bpy.data.objects.remove(obj)


def _fcurve_value(obj, path: str, index: int, frame: int) -> float:
    action, slot = obj.animation_data.action, obj.animation_data.action_slot
    fcurves = getattr(action, "fcurves", None)
    if fcurves is None:
        from bpy_extras import anim_utils

        fcurves = anim_utils.action_get_channelbag_for_slot(action, slot).fcurves
    return next(fc for fc in fcurves if fc.data_path == path and fc.array_index == index).evaluate(frame)


# ----------------------------------------------------------------------------- images, meshes, folders


def test_png_frames_read_back_by_blender(addon, rng, tmp_path):
    frames = rng.integers(0, 256, (2, 7, 11, 3), dtype=np.uint8)
    paths = sub("images").write_sequence(tmp_path, frames, start=3)
    assert [p.name for p in paths] == ["0003.png", "0004.png"]
    for p, f in zip(paths, frames):
        np.testing.assert_array_equal(sub("scene_io").load_image_file(p), f)
    assert [p.name for p in sub("scene_io").sequence_paths(paths[0])] == ["0003.png", "0004.png"]


def test_mesh_and_point_cloud_from_numpy(addon, rng):
    sio = sub("scene_io")
    verts = rng.normal(size=(5, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    colors = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    obj = sio.add_mesh(bpy.context.scene, "m", verts, faces, colors)
    co = np.empty(15, np.float32)
    obj.data.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(5, 3), verts)
    idx = np.empty(6, np.int32)
    obj.data.polygons.foreach_get("vertices", idx)
    np.testing.assert_array_equal(idx.reshape(2, 3), faces)
    col = np.empty(20, np.float32)
    obj.data.color_attributes["Col"].data.foreach_get("color_srgb", col)
    np.testing.assert_allclose(col.reshape(5, 4)[:, :3] * 255, colors, atol=0.51)
    pts = sio.add_mesh(bpy.context.scene, "p", verts, None, colors)
    assert len(pts.data.vertices) == 5 and len(pts.data.polygons) == 0


def test_output_root_policy(addon, tmp_path):
    resolve, ext_dir = sub("preferences").resolve_output_root, sub("preferences").EXTENSION_DIR
    assert resolve("BLEND", str(tmp_path / "shot.blend"), "") == ((tmp_path / "parallax").resolve(), "")
    root, warning = resolve("BLEND", "", str(tmp_path / "out"))
    assert root == (tmp_path / "out").resolve() and "not saved" in warning
    assert resolve("FOLDER", str(tmp_path / "a.blend"), str(tmp_path / "f"))[0] == (tmp_path / "f").resolve()
    with pytest.raises(ValueError, match="inside the extension"):
        resolve("FOLDER", "", str(ext_dir / "results"))
    with pytest.raises(ValueError, match="output_dir"):
        resolve("FOLDER", "", "")


# ----------------------------------------------------------------------------- a backend that is not there


def _dead_prefs(port: int = 1):
    prefs = bpy.context.preferences.addons[NAME].preferences
    prefs.address, prefs.timeout = f"tcp://127.0.0.1:{port}", 0.5
    return prefs


def test_connect_to_dead_address_reports_within_timeout(addon):
    _dead_prefs()
    props = bpy.context.scene.parallax
    props.last_error = ""
    t0 = time.monotonic()
    assert bpy.ops.parallax.connect() == {"FINISHED"}  # returns at once: the worker waits, not Blender
    assert time.monotonic() - t0 < 0.3
    assert sub("pump").run_until(lambda: props.last_error != "", timeout=5.0)
    assert time.monotonic() - t0 < 3.0
    assert "No answer from the Parallax backend at tcp://127.0.0.1:1" in props.last_error
    assert not props.connected


def test_job_against_dead_backend_fails_clearly(addon, tmp_path):
    prefs = _dead_prefs()
    prefs.output_policy, prefs.output_dir = "FOLDER", str(tmp_path)
    scene = bpy.context.scene
    props = scene.parallax
    scene.camera = None
    assert not bpy.ops.parallax.novel_views.poll()  # no camera: the button is greyed out with a reason
    obj = _animated_camera(scene, "AUTO", (1.0, 1.0), np.random.default_rng(1))
    scene.frame_start, scene.frame_end = 1, 3
    img = bpy.data.images.new("src", 48, 32)
    props.nvs_image = img
    assert bpy.ops.parallax.novel_views.poll()
    assert bpy.ops.parallax.novel_views() == {"FINISHED"}
    job = props.jobs[-1]
    assert sub("pump").run_until(lambda: job.state == "failed", timeout=5.0)
    assert "No answer from the Parallax backend" in job.message
    bpy.data.objects.remove(obj)


# ----------------------------------------------------------------------------- review fixes


def _drain_until(worker, pred, timeout: float = 10.0) -> list:
    """Events of a running worker until one satisfies `pred` (all of them, in order)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += worker.drain()
        if any(pred(e) for e in seen):
            return seen
        time.sleep(0.02)
    raise AssertionError(f"no such event within {timeout} s: {[(e.kind, e.message) for e in seen]}")


def _serve_one(router, P, reply):
    """Receive one request on the raw ROUTER socket and answer it with reply(msg)."""
    assert router.poll(5000), "the worker sent nothing"
    ident, *frames = router.recv_multipart()
    msg = P.decode(frames)
    router.send_multipart([ident, *P.encode(reply(msg))])
    return ident, msg


def test_worker_survives_an_undecodable_reply_and_keeps_serving(addon):
    import zmq

    W, P = sub("worker"), sub("_vendor.protocol")
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    w = W.Worker(f"tcp://127.0.0.1:{port}", timeout=2.0, heartbeat=60.0)
    w.start()
    try:
        w.put(W.Request("submit", tag="t1", job_type="depth", arrays={"image": np.zeros((4, 4, 3), np.uint8)}))
        ident, msg = _serve_one(router, P, lambda m: P.Message("submit", id=m.id, job="j1"))
        assert msg.params["job_type"] == "depth"
        router.send_multipart([ident, b"{not json"])  # a job event the client cannot decode
        events = _drain_until(w, lambda e: e.kind == "error")
        err = next(e for e in events if e.kind == "error")
        assert err.tag == "t1" and err.job == "j1" and "ProtocolError" in err.message
        assert w.is_alive() and not w.busy
        w.put(W.Request("connect"))  # the same thread still answers, on a fresh socket
        _serve_one(router, P, lambda m: P.Message("hello", id=m.id, params={"model": "m"}))
        events = _drain_until(w, lambda e: e.kind == "connected")
        assert next(e for e in events if e.kind == "connected").params["model"] == "m"
    finally:
        w.stop()
        router.close(0)
    assert W.RESULT_LIMITS.max_message_bytes > P.Limits().max_message_bytes  # results may exceed 1 GiB


def test_payload_over_the_server_limit_is_refused_before_upload(addon):
    ops, session = sub("operators"), sub("session").SESSION
    video = np.zeros((2, 500, 1000, 3), np.uint8)  # 3 MB, + 1.5 MB for the edited frame
    ops._check("edit", {"video": video, "edited": video[0]}, {})  # fine under the default 1 GiB
    session.server_limits = {"max_message_bytes": 1_000_000, "max_frames": 512}
    try:
        with pytest.raises(ValueError, match=r"inputs are 4\.5 MB, 4 MB over the limit of 1 MB: trim or downscale"):
            ops._check("edit", {"video": video, "edited": video[0]}, {})
    finally:
        session.server_limits = {}
    small, big = ops.submit_timeout(5.0, 1_000), ops.submit_timeout(5.0, 1 << 30)
    assert small == pytest.approx(5.0, abs=1e-3) and big > small + 30  # 1 GiB cannot go up in 5 s


def test_background_sequence_maps_scene_frames_to_file_numbers(addon, tmp_path):
    sio, im = sub("scene_io"), sub("images")
    scene = bpy.context.scene
    cam = bpy.data.objects.new("bgcam", bpy.data.cameras.new("bgcam"))
    scene.collection.objects.link(cam)
    clip = im.write_sequence(tmp_path / "clip", np.zeros((3, 4, 4, 3), np.uint8), start=1001)  # a user's clip
    ours = im.write_sequence(tmp_path / "ours", np.zeros((3, 4, 4, 3), np.uint8), start=5)  # numbered by frame
    for paths, start in ((clip, 1), (ours, 5)):
        sio.show_behind_camera(cam, sio.load_sequence_image(paths[0], "seq"), start, 3)
        user = cam.data.background_images[-1].image_user
        for i, p in enumerate(paths):
            scene.frame_set(start + i)
            assert user.frame_current == int(p.stem)  # Blender loads file (frame - start + 1 + offset)
    bpy.data.objects.remove(cam)


def test_frames_folder_sorts_numbers_naturally(addon, tmp_path):
    for n in (10, 2, 1):
        (tmp_path / f"frame_{n}.png").write_bytes(b"")
    assert [p.name for p in sub("scene_io").folder_paths(tmp_path)] == ["frame_1.png", "frame_2.png",
                                                                        "frame_10.png"]


def test_pump_survives_a_bad_event_and_restores_an_undone_job(addon, tmp_path):
    W, session, pump = sub("worker"), sub("session"), sub("pump")
    scene = bpy.context.scene
    scene.parallax.jobs.clear()
    ctx = session.JobContext("undone", "edit", scene.name, tmp_path / "edit", frame_start=3)
    session.SESSION.jobs[ctx.tag] = ctx
    old, w = session.SESSION.worker, W.Worker("tcp://127.0.0.1:1")  # never started: only its event queue
    session.SESSION.worker = w
    try:
        w.events.put(W.Event("progress", tag="undone", params={"progress": "not a number"}))  # raises inside
        w.events.put(W.Event("result", tag="undone", arrays={"images": np.full((2, 4, 4, 3), 9, np.uint8)}))
        assert pump.pump() == pump.INTERVAL_S
    finally:
        session.SESSION.worker = old
        session.SESSION.jobs.pop("undone")
    item = scene.parallax.jobs[-1]  # the item was gone (as after an undo): listed again, result applied
    assert (item.tag, item.state) == ("undone", "done"), item.message
    assert [p.name for p in sorted((tmp_path / "edit" / "frames").iterdir())] == ["0003.png", "0004.png"]


def test_remote_address_refused_without_online_access(addon):
    ops = sub("operators")
    assert all(map(ops._is_loopback, ["tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5", "ipc:///x"]))
    assert not any(map(ops._is_loopback, ["tcp://10.0.0.1:5555", "tcp://example.com:5", "tcp://0.0.0.0:5"]))
    assert not bpy.app.online_access  # the bpy module runs offline, like a default Blender
    prefs = _dead_prefs()
    prefs.address = "tcp://10.255.0.1:5555"
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.parallax.connect()
    w = sub("session").SESSION.worker
    assert w is None or w.address != prefs.address  # nothing was sent there


def test_local_backend_stops_with_its_children(addon, tmp_path):
    import os
    import signal

    session = sub("session").Session()
    script = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
              "time.sleep(60)']); print(c.pid, flush=True); time.sleep(60)")
    b = session.start_backend([sys.executable, "-c", script], "tcp://127.0.0.1:1", tmp_path / "log.txt")
    deadline = time.monotonic() + 10
    while not (tmp_path / "log.txt").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int((tmp_path / "log.txt").read_text())
    assert os.getpgid(b.process.pid) == b.process.pid == os.getpgid(child)  # its own group, child included
    session.stop_backend()
    assert b.process.poll() == -signal.SIGTERM
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_reopened_file_marks_jobs_in_flight_interrupted(addon, tmp_path):
    scene = bpy.context.scene
    scene.parallax.jobs.clear()
    for tag, state in (("gone", "running"), ("old", "done")):
        item = scene.parallax.jobs.add()
        item.tag, item.state = tag, state
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot.blend"))
    jobs = bpy.context.scene.parallax.jobs
    assert [(j.tag, j.state) for j in jobs] == [("gone", "failed"), ("old", "done")]
    assert jobs[0].message == "interrupted (file reopened)"
