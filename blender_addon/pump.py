"""The timer pump: the only code that applies worker events to bpy data.

Registered with bpy.app.timers (persistent across file loads). Timers never fire in the bpy Python
module, so headless scripts and tests call `pump()` themselves (`run_until` wraps that loop). A
persistent load_post handler marks jobs saved mid-flight in a reopened file as interrupted.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable

import bpy

from . import results
from .session import SESSION
from .worker import Event

INTERVAL_S = 0.1  # how often Blender calls the pump while the add-on is enabled


def _job_item(scene, tag: str):
    return next((j for j in scene.parallax.jobs if j.tag == tag), None) if scene else None


def _scenes():
    """Local scenes only: a library-linked scene's properties cannot be written."""
    return [s for s in bpy.data.scenes if s.library is None]


def _restore_item(scene, ctx):
    """The job's list item again after an undo removed it, so its event (and result) is not lost."""
    item = scene.parallax.jobs.add()
    item.tag, item.job_type, item.out_dir, item.state = ctx.tag, ctx.job_type, str(ctx.out_dir), "running"
    return item


def _undo_push() -> None:
    """One undo step for an applied result, so undoing it does not also undo the user's work before it."""
    with contextlib.suppress(RuntimeError):  # no window (the bpy module, background): nothing to undo into
        bpy.ops.ed.undo_push(message="Parallax result")


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "SEQUENCE_EDITOR", "PROPERTIES"):
                area.tag_redraw()


def _connection(ev: Event) -> None:
    info = ev.params
    text = ", ".join(f"{k} {info[k]}" for k in ("model", "device", "memory") if info.get(k) not in (None, ""))
    if ev.kind == "connected":
        SESSION.server_limits = dict(info.get("limits") or {})
    for scene in _scenes():
        p = scene.parallax
        p.connected = ev.kind == "connected"
        p.backend_info = (text or "connected") if p.connected else ""
        p.last_error = "" if p.connected else ev.message


def _job_event(ev: Event) -> None:
    ctx = SESSION.jobs.get(ev.tag)
    scene = bpy.data.scenes.get(ctx.scene) if ctx else None
    if ctx is None or ctx.done or scene is None or scene.library is not None:
        return  # unknown, or already ended (e.g. failed when the local backend exited)
    item = _job_item(scene, ev.tag)
    if item is None:
        item = _restore_item(scene, ctx)
    if ev.job:
        item.job = ev.job
    if ev.kind == "submitted":
        item.state = "queued"
    elif ev.kind == "progress":
        state = ev.params.get("state", "running")
        item.state = state if state in ("queued", "running") else "running"
        item.progress, item.message = float(ev.params.get("progress", 0.0)), ev.message
    elif ev.kind == "result":
        try:
            item.message = results.apply(ctx, ev.arrays, ev.params)
            item.state, item.progress = "done", 1.0
            _undo_push()
        except Exception as exc:  # a bad result must not break the pump
            traceback.print_exc()
            item.state, item.message = "failed", f"could not apply the result: {exc}"
            scene.parallax.last_error = item.message
        ctx.done = True
    elif ev.kind == "error":
        item.state = "cancelled" if ev.code == "cancelled" else "failed"
        item.message = ev.message
        if item.state == "failed":
            scene.parallax.last_error = ev.message
            print(f"Parallax: job {ev.tag} failed: {ev.message}")
        ctx.done = True


def _check_local_backend() -> None:
    b = SESSION.backend
    if b is None or (msg := b.exit_message()) is None:
        return
    SESSION.backend = None
    for scene in _scenes():
        scene.parallax.connected, scene.parallax.last_error = False, msg
    for tag, ctx in SESSION.jobs.items():  # the worker would notice too, but only after its timeout
        item = _job_item(bpy.data.scenes.get(ctx.scene), tag)
        if not ctx.done and item is not None:
            item.state, item.message, ctx.done = "failed", msg, True


def pump() -> float:
    """Apply every pending worker event; returns the interval for bpy.app.timers.

    Always returns the interval: a timer callback that raises is unregistered by Blender for good.
    """
    try:
        w = SESSION.worker
        events = w.drain() if w is not None else []
        for ev in events:
            try:
                if ev.kind in ("connected", "disconnected"):
                    _connection(ev)
                else:
                    _job_event(ev)
            except Exception:  # one bad event must not drop the ones after it
                traceback.print_exc()
        _check_local_backend()
        if events:
            _redraw()
    except Exception:
        traceback.print_exc()
    return INTERVAL_S


@bpy.app.handlers.persistent
def on_load_post(*_args) -> None:
    """A reopened file may hold jobs saved while in flight; no live session context will finish them."""
    for scene in _scenes():
        for item in scene.parallax.jobs:
            ctx = SESSION.jobs.get(item.tag)
            if item.state in ("sending", "queued", "running") and (ctx is None or ctx.done):
                item.state, item.message = "failed", "interrupted (file reopened)"


def run_until(done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Pump until `done()` or `timeout` seconds (for headless scripts and tests); returns done()."""
    deadline = time.monotonic() + timeout
    while True:
        pump()
        if done():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def register() -> None:
    if not bpy.app.timers.is_registered(pump):
        bpy.app.timers.register(pump, first_interval=INTERVAL_S, persistent=True)
    if on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(on_load_post)


def unregister() -> None:
    if bpy.app.timers.is_registered(pump):
        bpy.app.timers.unregister(pump)
    while on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(on_load_post)
