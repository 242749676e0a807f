"""Operators: connect, start/stop a local backend, the jobs (novel views, cameras, edit, interpolate), cancel.

A job operator gathers its inputs on the main thread (bpy), checks them against the vendored job
spec, and hands them to the worker; it never waits for the backend. Run from the UI (invoke) it then
stays modal without blocking, so ESC cancels the job (unless it stops playback); `execute` alone
(scripts, tests) just submits.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import time
from typing import ClassVar

import bpy
import numpy as np

from . import camera_io, preferences, scene_io
from ._vendor import protocol, specs
from .session import SESSION, JobContext, backend_command, new_tag
from .worker import Request


def _image(image, path: str, what: str) -> np.ndarray:
    if image is not None:
        return scene_io.image_to_array(image)
    if path:
        return scene_io.load_image_file(path)
    raise ValueError(f"{what}: choose an image datablock or a file")


SUBMIT_BYTES_PER_S = 20e6  # slowest upload + validation + save rate the submit timeout allows for


def _limits() -> protocol.Limits:
    """The server's limits from its hello when connected, else the protocol's defaults."""
    known = {f.name for f in dataclasses.fields(protocol.Limits)}
    return protocol.Limits(**{k: int(v) for k, v in SESSION.server_limits.items() if k in known})


def payload_bytes(arrays: dict) -> int:
    return sum(int(np.asarray(a).nbytes) for a in arrays.values())


def submit_timeout(timeout: float, nbytes: int) -> float:
    """The preference's timeout plus time to send and store `nbytes` (a big clip takes seconds)."""
    return float(timeout) + nbytes / SUBMIT_BYTES_PER_S


def _check(job_type: str, arrays: dict, params: dict) -> None:
    """The backend's own input check, run here first so mistakes are reported before any upload."""
    limits = _limits()
    total = payload_bytes(arrays)
    if total > limits.max_message_bytes:
        over = math.ceil((total - limits.max_message_bytes) / 1e6)
        raise ValueError(f"inputs are {total / 1e6:.1f} MB, {over} MB over the limit of "
                         f"{limits.max_message_bytes / 1e6:.0f} MB: trim or downscale the clip or image")
    msg = protocol.Message(type="submit", params={"job_type": job_type, **params}, arrays=arrays)
    try:
        specs.validate_job(msg, limits)
    except protocol.ProtocolError as exc:
        raise ValueError(str(exc)) from None


def _is_loopback(address: str) -> bool:
    """ipc:// and inproc:// endpoints, and tcp:// to localhost or a loopback IP, never leave the machine."""
    scheme, _, rest = address.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _online_refusal(address: str) -> str:
    """Why `address` may not be used ("" when it may): Blender's "Allow Online Access" gates remote hosts."""
    if bpy.app.online_access or _is_loopback(address):
        return ""
    return (f"Parallax: {address} is not on this machine and Blender's online access is off "
            "(Preferences ▸ System ▸ Network): use a loopback address or allow online access")


class _JobOperator:
    """Shared submit + modal-ESC logic; subclasses define job_type and gather()."""

    bl_options: ClassVar[set[str]] = {"REGISTER"}
    job_type = ""

    def gather(self, context) -> tuple[dict, dict, int, dict]:
        """(arrays, params, first scene frame of the result, context options); raises ValueError."""
        raise NotImplementedError

    def execute(self, context):
        props, prefs = context.scene.parallax, preferences.get(context)
        if refusal := _online_refusal(prefs.address):
            self.report({"ERROR"}, refusal)
            return {"CANCELLED"}
        try:
            arrays, params, frame_start, options = self.gather(context)
            if "steps" in specs.JOB_SPECS[self.job_type].params:
                params |= {"steps": props.steps, "seed": props.seed, "sampler": props.sampler}
            _check(self.job_type, arrays, params)
            root, warning = preferences.output_root(context)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if warning:
            self.report({"WARNING"}, warning)
        tag = new_tag()
        out = root / f"{self.job_type}_{time.strftime('%Y%m%d-%H%M%S')}_{tag[:6]}"
        item = props.jobs.add()
        item.tag, item.job_type, item.out_dir, item.message = tag, self.job_type, str(out), "sending"
        props.active_job = len(props.jobs) - 1
        ctx = JobContext(tag, self.job_type, context.scene.name, out, frame_start, options)
        SESSION.submit(ctx, arrays, params, prefs.address, prefs.timeout,
                       submit_timeout(prefs.timeout, payload_bytes(arrays)))
        self._tag = tag
        self.report({"INFO"}, f"Parallax: {self.job_type} job sent to {prefs.address}")
        return {"FINISHED"}

    def invoke(self, context, event):
        result = self.execute(context)
        if "FINISHED" not in result:
            return result
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        ctx = SESSION.jobs.get(getattr(self, "_tag", ""))
        if ctx is None or ctx.done:
            return {"FINISHED"}
        screen = getattr(context, "screen", None)
        playing = screen is not None and screen.is_animation_playing
        if event.type == "ESC" and event.value == "PRESS" and not playing:  # during playback ESC stops it
            SESSION.cancel(ctx.tag)
            self.report({"WARNING"}, "Parallax: cancelling the job")
            return {"CANCELLED"}
        return {"PASS_THROUGH"}


def _frames(scene) -> list[int]:
    return list(range(scene.frame_start, scene.frame_end + 1))


class ParallaxNovelViews(_JobOperator, bpy.types.Operator):
    """Render novel views of the source image along the animated scene camera"""

    bl_idname = "parallax.novel_views"
    bl_label = "Novel Views"
    job_type = "nvs"

    @classmethod
    def poll(cls, context):
        scene = context.scene
        if scene.camera is None:
            cls.poll_message_set("The scene needs an active camera (animated over the frame range)")
            return False
        if scene.parallax.nvs_image is None and not scene.parallax.nvs_image_path:
            cls.poll_message_set("Choose a source image (seen by the camera at the first frame)")
            return False
        return True

    def gather(self, context):
        scene, p = context.scene, context.scene.parallax
        image = _image(p.nvs_image, p.nvs_image_path, "source image")
        K, c2w, W, H = scene_io.read_camera_track(scene, scene.camera, _frames(scene))
        h, w = image.shape[:2]
        K[0] = camera_io.scale_intrinsics(K[0], w / W, h / H)  # frame 0 describes the source image itself
        params = {"width": W, "height": H, "depth_scale": p.nvs_depth_scale, "samples": p.nvs_samples,
                  "mesh": p.nvs_mesh}
        return {"image": image, "K": K, "c2w": c2w}, params, scene.frame_start, {"camera": scene.camera.name}


def _clip_poll(cls, clip, folder: str) -> bool:
    if clip is None and not folder:
        cls.poll_message_set("Choose a movie clip (image sequence) or a frames folder")
        return False
    return True


class ParallaxRecoverCameras(_JobOperator, bpy.types.Operator):
    """Recover an animated camera (and points) from a clip"""

    bl_idname = "parallax.recover_cameras"
    bl_label = "Recover Cameras"
    job_type = "cameras"

    @classmethod
    def poll(cls, context):
        p = context.scene.parallax
        return _clip_poll(cls, p.cam_clip, p.cam_folder)

    def gather(self, context):
        scene, p = context.scene, context.scene.parallax
        paths = scene_io.clip_paths(p.cam_clip, p.cam_folder)
        video = scene_io.read_frames(paths)  # (F, H, W, 3)
        fps = p.cam_clip.fps if p.cam_clip is not None else scene.render.fps / scene.render.fps_base
        start = p.cam_clip.frame_start if p.cam_clip is not None else scene.frame_start
        options = {"paths": [str(x) for x in paths], "width": video.shape[2], "height": video.shape[1],
                   "fps": fps, "points": p.cam_points}
        return {"video": video}, {"points": p.cam_points}, start, options


class ParallaxPropagateEdit(_JobOperator, bpy.types.Operator):
    """Propagate an edit of the first frame through the clip"""

    bl_idname = "parallax.propagate_edit"
    bl_label = "Propagate Edit"
    job_type = "edit"

    @classmethod
    def poll(cls, context):
        p = context.scene.parallax
        if not _clip_poll(cls, p.edit_clip, p.edit_folder):
            return False
        if p.edit_image is None and not p.edit_image_path:
            cls.poll_message_set("Choose the edited first frame (an image or a file)")
            return False
        return True

    def gather(self, context):
        scene, p = context.scene, context.scene.parallax
        video = scene_io.read_frames(scene_io.clip_paths(p.edit_clip, p.edit_folder))
        arrays = {"video": video, "edited": _image(p.edit_image, p.edit_image_path, "edited frame")}
        if p.edit_mask is not None:
            arrays["mask"] = np.where(scene_io.image_to_array(p.edit_mask)[:, :, 0] > 127, 255, 0).astype(np.uint8)
        start = p.edit_clip.frame_start if p.edit_clip is not None else scene.frame_start
        return arrays, {"dilate": p.edit_dilate, "threshold": p.edit_threshold}, start, {}


class ParallaxInterpolate(_JobOperator, bpy.types.Operator):
    """Generate the frames between two images"""

    bl_idname = "parallax.interpolate"
    bl_label = "Interpolate"
    job_type = "interpolate"

    @classmethod
    def poll(cls, context):
        p = context.scene.parallax
        if p.interp_first is None or p.interp_last is None:
            cls.poll_message_set("Choose the first and the last image")
            return False
        if p.interp_use_camera and context.scene.camera is None:
            cls.poll_message_set("'Follow Scene Camera' needs an active camera")
            return False
        return True

    def gather(self, context):
        scene, p = context.scene, context.scene.parallax
        arrays = {"first": scene_io.image_to_array(p.interp_first), "last": scene_io.image_to_array(p.interp_last)}
        frames = p.interp_frames
        if p.interp_use_camera:
            K, c2w, W, H = scene_io.read_camera_track(scene, scene.camera, _frames(scene))
            h, w = arrays["first"].shape[:2]
            arrays |= {"K": camera_io.scale_intrinsics(K, w / W, h / H), "c2w": c2w}
            frames = len(K)
        return arrays, {"frames": frames}, scene.frame_start, {}


class ParallaxConnect(bpy.types.Operator):
    """Connect to the backend and show its model, device and memory"""

    bl_idname = "parallax.connect"
    bl_label = "Connect"

    def execute(self, context):
        prefs = preferences.get(context)
        if refusal := _online_refusal(prefs.address):
            self.report({"ERROR"}, refusal)
            return {"CANCELLED"}
        SESSION.ensure_worker(prefs.address, prefs.timeout).put(Request("connect"))
        context.scene.parallax.last_error = ""
        self.report({"INFO"}, f"Parallax: connecting to {prefs.address}")
        return {"FINISHED"}


class ParallaxStartBackend(bpy.types.Operator):
    """Start `parallax serve` on this machine at the preferences' address"""

    bl_idname = "parallax.start_backend"
    bl_label = "Start Local Backend"

    def execute(self, context):
        prefs = preferences.get(context)
        if refusal := _online_refusal(prefs.address):
            self.report({"ERROR"}, refusal)
            return {"CANCELLED"}
        python = bpy.path.abspath(prefs.python) if prefs.python.strip() else ""  # "//" paths: relative to the .blend
        try:
            root, _ = preferences.output_root(context)
            b = SESSION.start_backend(backend_command(python, prefs.command), prefs.address,
                                      root / "backend.log")
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, f"Parallax: could not start the backend: {exc}")
            return {"CANCELLED"}
        # ZeroMQ queues the hello until the server binds; allow time for the model to load.
        SESSION.ensure_worker(prefs.address, prefs.timeout).put(Request("connect", params={"timeout": 120.0}))
        self.report({"INFO"}, f"Parallax: backend starting (pid {b.process.pid}), log {b.log_path}")
        return {"FINISHED"}


class ParallaxStopBackend(bpy.types.Operator):
    """Stop the local backend started from Blender"""

    bl_idname = "parallax.stop_backend"
    bl_label = "Stop Local Backend"

    @classmethod
    def poll(cls, context):
        if SESSION.backend is None:
            cls.poll_message_set("No local backend was started from this Blender session")
            return False
        return True

    def execute(self, context):
        SESSION.stop_backend()
        for scene in (s for s in bpy.data.scenes if s.library is None):
            scene.parallax.connected, scene.parallax.backend_info = False, ""
        return {"FINISHED"}


class ParallaxCancelJob(bpy.types.Operator):
    """Cancel a running job"""

    bl_idname = "parallax.cancel_job"
    bl_label = "Cancel Job"

    tag: bpy.props.StringProperty()

    @classmethod
    def poll(cls, context):
        if not any(not c.done for c in SESSION.jobs.values()):
            cls.poll_message_set("No job is running")
            return False
        return True

    def execute(self, context):
        SESSION.cancel(self.tag)
        return {"FINISHED"}


class ParallaxClearJobs(bpy.types.Operator):
    """Remove finished jobs from the list (their files stay on disk)"""

    bl_idname = "parallax.clear_jobs"
    bl_label = "Clear Finished"

    def execute(self, context):
        jobs = context.scene.parallax.jobs
        for i in reversed(range(len(jobs))):
            if jobs[i].state in ("done", "failed", "cancelled"):
                SESSION.jobs.pop(jobs[i].tag, None)
                jobs.remove(i)
        return {"FINISHED"}


CLASSES = (ParallaxConnect, ParallaxStartBackend, ParallaxStopBackend, ParallaxNovelViews,
           ParallaxRecoverCameras, ParallaxPropagateEdit, ParallaxInterpolate,
           ParallaxCancelJob, ParallaxClearJobs)
