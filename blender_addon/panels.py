"""The sidebar tab "Parallax" in the 3D viewport: Backend, the four jobs, and Jobs."""

from __future__ import annotations

import bpy

from .session import SESSION


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "Parallax"


class PARALLAX_PT_backend(_Panel, bpy.types.Panel):  # noqa: N801 (Blender wants _PT_ in panel names)
    bl_label = "Backend"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        row = layout.row()
        row.label(text=p.backend_info if p.connected else "Not connected",
                  icon="CHECKMARK" if p.connected else "UNLINKED")
        layout.operator("parallax.connect", icon="LINKED")
        row = layout.row(align=True)
        row.operator("parallax.start_backend", icon="PLAY")
        row.operator("parallax.stop_backend", icon="SNAP_FACE")
        if SESSION.backend is not None:
            layout.label(text=f"Local backend pid {SESSION.backend.process.pid}")
        if p.last_error:
            col = layout.column()
            col.alert = True
            for line in _wrap(p.last_error, 48):
                col.label(text=line)
        box = layout.box()
        box.prop(p, "steps")
        box.prop(p, "seed")
        box.prop(p, "sampler")


class PARALLAX_PT_novel_views(_Panel, bpy.types.Panel):  # noqa: N801
    bl_label = "Novel Views"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        layout.template_ID(p, "nvs_image", open="image.open")
        if p.nvs_image is None:
            layout.prop(p, "nvs_image_path")
        layout.prop(p, "nvs_depth_scale")
        layout.prop(p, "nvs_samples")
        layout.prop(p, "nvs_mesh")
        layout.operator("parallax.novel_views", icon="CAMERA_DATA")


class PARALLAX_PT_recover_cameras(_Panel, bpy.types.Panel):  # noqa: N801
    bl_label = "Recover Cameras"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        layout.prop(p, "cam_clip")
        if p.cam_clip is None:
            layout.prop(p, "cam_folder")
        layout.prop(p, "cam_points")
        layout.operator("parallax.recover_cameras", icon="TRACKER")


class PARALLAX_PT_propagate_edit(_Panel, bpy.types.Panel):  # noqa: N801
    bl_label = "Propagate Edit"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        layout.prop(p, "edit_clip")
        if p.edit_clip is None:
            layout.prop(p, "edit_folder")
        layout.prop(p, "edit_image")
        if p.edit_image is None:
            layout.prop(p, "edit_image_path")
        layout.prop(p, "edit_mask")
        row = layout.row(align=True)
        row.prop(p, "edit_dilate")
        row.prop(p, "edit_threshold")
        layout.operator("parallax.propagate_edit", icon="BRUSH_DATA")


class PARALLAX_PT_interpolate(_Panel, bpy.types.Panel):  # noqa: N801
    bl_label = "Interpolate"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        layout.prop(p, "interp_first")
        layout.prop(p, "interp_last")
        layout.prop(p, "interp_use_camera")
        if not p.interp_use_camera:
            layout.prop(p, "interp_frames")
        layout.operator("parallax.interpolate", icon="IPO_LINEAR")


class PARALLAX_PT_jobs(_Panel, bpy.types.Panel):  # noqa: N801
    bl_label = "Jobs"

    def draw(self, context):
        p, layout = context.scene.parallax, self.layout
        if not p.jobs:
            layout.label(text="No jobs yet")
        for item in reversed(p.jobs):
            box = layout.box()
            row = box.row()
            row.label(text=f"{item.job_type} · {item.state}")
            if item.state in ("sending", "queued", "running"):
                row.operator("parallax.cancel_job", text="", icon="CANCEL").tag = item.tag
            if item.state in ("queued", "running"):
                box.progress(factor=item.progress, text=item.message or f"{item.progress:.0%}")
            elif item.message:
                col = box.column()
                col.alert = item.state == "failed"
                for line in _wrap(item.message, 48):
                    col.label(text=line)
        layout.operator("parallax.clear_jobs", icon="TRASH")


def _wrap(text: str, width: int) -> list[str]:
    """Split text into lines of at most `width` characters at spaces (labels do not wrap)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


CLASSES = (PARALLAX_PT_backend, PARALLAX_PT_novel_views, PARALLAX_PT_recover_cameras, PARALLAX_PT_propagate_edit,
           PARALLAX_PT_interpolate, PARALLAX_PT_jobs)
