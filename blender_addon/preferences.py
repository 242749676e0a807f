"""Add-on preferences: where the backend is, how to start one, where results go."""

from __future__ import annotations

import tempfile
from pathlib import Path

import bpy

EXTENSION_DIR = Path(__file__).resolve().parent  # results must never land in here
OUTPUT_POLICIES = (
    ("BLEND", "Next to the .blend", "A 'parallax' folder beside the saved .blend file (temp folder if unsaved)"),
    ("FOLDER", "Chosen folder", "Always the output folder below"),
)


class ParallaxPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    address: bpy.props.StringProperty(
        name="Backend Address", default="tcp://127.0.0.1:5555",
        description="ZeroMQ endpoint of `parallax serve` (loopback by default)")
    timeout: bpy.props.FloatProperty(
        name="Timeout", default=5.0, min=0.1, max=600.0, subtype="TIME_ABSOLUTE", unit="TIME_ABSOLUTE",
        description="Seconds to wait for any answer before reporting the backend as unavailable")
    python: bpy.props.StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Interpreter of the environment where parallax is installed (runs -m backend.cli serve)")
    command: bpy.props.StringProperty(
        name="Backend Command", default="",
        description="Full command instead (e.g. 'parallax serve --device cuda'); --bind is appended")
    output_policy: bpy.props.EnumProperty(name="Results", items=OUTPUT_POLICIES, default="BLEND")
    output_dir: bpy.props.StringProperty(name="Output Folder", subtype="DIR_PATH", default="")

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "address")
        layout.prop(self, "timeout")
        box = layout.box()
        box.label(text="Local backend")
        box.prop(self, "python")
        box.prop(self, "command")
        box = layout.box()
        box.prop(self, "output_policy")
        box.prop(self, "output_dir")


def get(context=None) -> ParallaxPreferences:
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


def resolve_output_root(policy: str, blend_path: str, folder: str) -> tuple[Path, str]:
    """(results root, a warning or "") for a policy; pure so it can be tested without a scene.

    BLEND: <blend dir>/parallax, or the chosen folder / the temp folder while the .blend is unsaved.
    Raises ValueError for a root inside the extension's own folder (it is replaced on update).
    """
    warning = ""
    if policy == "FOLDER" and folder.strip():
        root = Path(folder).expanduser()
    elif policy == "FOLDER":
        raise ValueError("output_dir: the 'Chosen folder' policy needs an output folder")
    elif blend_path:
        root = Path(blend_path).resolve().parent / "parallax"
    else:
        root = Path(folder).expanduser() if folder.strip() else Path(tempfile.gettempdir()) / "parallax"
        warning = f"The .blend is not saved: results go to {root}"
    root = root.resolve()
    if root == EXTENSION_DIR or EXTENSION_DIR in root.parents:
        raise ValueError(f"output_dir: {root} is inside the extension's folder; choose another folder")
    return root, warning


def output_root(context=None) -> tuple[Path, str]:
    prefs = get(context)
    folder = bpy.path.abspath(prefs.output_dir) if prefs.output_dir else ""
    return resolve_output_root(prefs.output_policy, bpy.data.filepath, folder)
