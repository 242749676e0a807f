"""The one PropertyGroup on the scene (`scene.parallax`): job inputs, options, backend state, jobs."""

from __future__ import annotations

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

SAMPLERS = (("heun", "Heun", "Second-order, the default"), ("euler", "Euler", "First-order, fastest"),
            ("dpmpp_2m", "DPM-Solver++(2M)", "Second-order multistep solver, one evaluation per step"))
JOB_STATES = ("sending", "queued", "running", "done", "failed", "cancelled")


class ParallaxJob(bpy.types.PropertyGroup):
    """One job as shown in the Jobs panel (the Python-side context lives in session.SESSION.jobs)."""

    tag: StringProperty()  # the add-on's id
    job: StringProperty()  # the server's id
    job_type: StringProperty()
    state: EnumProperty(items=[(s, s.title(), "") for s in JOB_STATES], default="sending")
    progress: FloatProperty(min=0.0, max=1.0, subtype="FACTOR")
    message: StringProperty()
    out_dir: StringProperty(subtype="DIR_PATH")


class ParallaxSceneProps(bpy.types.PropertyGroup):
    # Backend state (written by the pump)
    connected: BoolProperty(default=False)
    backend_info: StringProperty(description="Model, device and memory reported by the backend")
    last_error: StringProperty()

    # Sampling, shared by every job
    steps: IntProperty(name="Steps", default=20, min=1, max=500)
    seed: IntProperty(name="Seed", default=0, min=0)
    sampler: EnumProperty(name="Sampler", items=SAMPLERS, default="heun")

    # Novel views
    nvs_image: PointerProperty(name="Source Image", type=bpy.types.Image,
                               description="Image seen by the scene camera at the first frame")
    nvs_image_path: StringProperty(name="Source File", subtype="FILE_PATH",
                                   description="Used when no image datablock is chosen")
    nvs_depth_scale: FloatProperty(name="Depth Scale", default=1.0, min=1e-6, soft_max=1000.0,
                                   description="Scene units per unit of the predicted depth")
    nvs_samples: IntProperty(name="Samples", default=1, min=1, max=16, description="Best-of-N samples")
    nvs_mesh: BoolProperty(name="Import Mesh", default=False, description="Fuse the views into a coloured mesh")

    # Recover cameras
    cam_clip: PointerProperty(name="Clip", type=bpy.types.MovieClip,
                              description="An image-sequence movie clip")
    cam_folder: StringProperty(name="Frames Folder", subtype="DIR_PATH",
                               description="A folder of frames, used when no clip is chosen")
    cam_points: BoolProperty(name="Import Points", default=True)

    # Propagate edit
    edit_clip: PointerProperty(name="Clip", type=bpy.types.MovieClip)
    edit_folder: StringProperty(name="Frames Folder", subtype="DIR_PATH")
    edit_image: PointerProperty(name="Edited First Frame", type=bpy.types.Image)
    edit_image_path: StringProperty(name="Edited File", subtype="FILE_PATH")
    edit_mask: PointerProperty(name="Mask", type=bpy.types.Image, description="Optional; white = edited")
    edit_dilate: IntProperty(name="Dilate", default=8, min=0, max=256)
    edit_threshold: IntProperty(name="Threshold", default=12, min=0, max=255)

    # Interpolate
    interp_first: PointerProperty(name="First", type=bpy.types.Image)
    interp_last: PointerProperty(name="Last", type=bpy.types.Image)
    interp_frames: IntProperty(name="Frames", default=16, min=2, max=512)
    interp_use_camera: BoolProperty(name="Follow Scene Camera", default=False,
                                    description="Send the scene camera's path over the frame range")

    # Jobs
    jobs: CollectionProperty(type=ParallaxJob)
    active_job: IntProperty()


CLASSES = (ParallaxJob, ParallaxSceneProps)


def register() -> None:
    bpy.types.Scene.parallax = PointerProperty(type=ParallaxSceneProps)


def unregister() -> None:
    del bpy.types.Scene.parallax
