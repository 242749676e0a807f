"""Parallax for Blender: novel views, camera recovery, edit propagation and interpolation from a local
backend (`parallax serve`). This module only registers; see operators.py for what the buttons do,
worker.py for the socket thread and pump.py for the timer that applies results to the scene.
"""

from __future__ import annotations

import bpy

from . import operators, panels, preferences, properties, pump
from .session import SESSION

CLASSES = (preferences.ParallaxPreferences, *properties.CLASSES, *operators.CLASSES, *panels.CLASSES)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    properties.register()
    pump.register()


def unregister() -> None:
    pump.unregister()
    SESSION.shutdown()
    properties.unregister()
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
