"""Blender intrinsics and axes against Blender itself (the real bpy wheel).

The oracle is `bpy_extras.object_utils.world_to_camera_view`, which maps a world point to the camera
frame (x, y in [0, 1] from the bottom-left, z = depth along the view axis). Blender stores camera
settings and matrices in float32 and mathutils computes in float32, so the two agree to a few float32
ulps of the projection's own scale max(W, H, fx, fy) (1e-4 to 1e-2 px), not to 1e-9 px; a half-pixel
slip or a wrong fit, aspect or shift is still orders of magnitude above that.
"""

from __future__ import annotations

import numpy as np
import pytest

from backend.geometry.cameras import (
    BlenderCameraParams,
    blender_intrinsics,
    blender_params_from_intrinsics,
    blender_to_opencv,
)

pytestmark = pytest.mark.blender

bpy = pytest.importorskip("bpy")  # after conftest.py has pointed BLENDER_USER_RESOURCES elsewhere
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Vector  # noqa: E402

CAM_FIELDS = ("lens", "sensor_width", "sensor_height", "sensor_fit", "shift_x", "shift_y")
RENDER_FIELDS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y")
REL_TOL = 3e-6  # of max(W, H, fx, fy): worst seen over 400 random cameras was 8.7e-7 (float32 in Blender)


@pytest.fixture(scope="module")
def scene_and_camera():
    """A fresh empty scene holding one camera object."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    cam = bpy.data.cameras.new("parallax-test")
    obj = bpy.data.objects.new("parallax-test", cam)
    scene.collection.objects.link(obj)
    scene.camera = obj
    return scene, obj


def apply(scene, obj, p: BlenderCameraParams, rng: np.random.Generator) -> BlenderCameraParams:
    """Put p and a random pose into Blender; return the settings as Blender stored them (float32)."""
    for name in CAM_FIELDS:
        setattr(obj.data, name, getattr(p, name))
    for name in RENDER_FIELDS:
        setattr(scene.render, name, getattr(p, name))
    obj.location = rng.normal(size=3) * 3
    obj.rotation_euler = rng.uniform(-np.pi, np.pi, 3)
    bpy.context.view_layer.update()
    stored = {n: getattr(obj.data, n) for n in CAM_FIELDS} | {n: getattr(scene.render, n) for n in RENDER_FIELDS}
    return BlenderCameraParams(**stored)


def blender_pixels(scene, obj, K, W, H, rng, m: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Random world points seen by our camera (K, c2w from matrix_world); return (ours, Blender's) uv.

    Points are chosen at pixels in and a little around the image at depths 0.5–30, lifted with our K,
    rounded to float32 (what a mathutils Vector holds) and projected by both sides.
    """
    c2w = blender_to_opencv(np.array(obj.matrix_world))  # (4, 4) OpenCV axes
    uv = rng.uniform(-0.2, 1.2, (m, 2)) * [W, H]
    cam = np.concatenate([(uv - K[:2, 2]) / np.diag(K)[:2], np.ones((m, 1))], 1) * rng.uniform(0.5, 30, (m, 1))
    world = (cam @ c2w[:3, :3].T + c2w[:3, 3]).astype(np.float32).astype(np.float64)  # (m, 3)
    local = (world - c2w[:3, 3]) @ c2w[:3, :3]  # (m, 3) OpenCV camera coordinates
    ours = (local @ K.T)[:, :2] / local[:, 2:]
    ndc = np.array([tuple(world_to_camera_view(scene, obj, Vector(x))) for x in world])  # (m, 3) float64
    np.testing.assert_allclose(ndc[:, 2], local[:, 2], rtol=1e-5)  # depth along the view axis
    # Blender's frame coordinates run bottom-up; image rows run top-down.
    theirs = np.stack([ndc[:, 0] * W, (1 - ndc[:, 1]) * H], axis=-1)
    return ours, theirs


def random_params(rng: np.random.Generator, i: int) -> BlenderCameraParams:
    """Cycle through every sensor fit, percentage and square / wide / tall pixel; sizes stay divisible."""
    pct = (100, 50, 25, 200)[i % 4]
    aspect = [(1.0, 1.0), (float(rng.uniform(1, 3)), 1.0), (1.0, float(rng.uniform(1, 3)))][(i // 3) % 3]
    return BlenderCameraParams(
        lens=float(rng.uniform(8, 200)),
        sensor_width=float(rng.uniform(6, 50)),
        sensor_height=float(rng.uniform(6, 50)),
        sensor_fit=("AUTO", "HORIZONTAL", "VERTICAL")[i % 3],
        shift_x=float(rng.uniform(-0.5, 0.5)) * (i % 5 != 0),
        shift_y=float(rng.uniform(-0.5, 0.5)) * (i % 5 != 0),
        resolution_x=4 * int(rng.integers(4, 400)),  # × 25 % stays whole, as world_to_camera_view assumes
        resolution_y=4 * int(rng.integers(4, 400)),
        resolution_percentage=pct,
        pixel_aspect_x=aspect[0],
        pixel_aspect_y=aspect[1],
    )


def test_blender_intrinsics_match_world_to_camera_view(scene_and_camera, rng):
    scene, obj = scene_and_camera
    seen = set()
    for i in range(36):
        p = apply(scene, obj, random_params(rng, i), rng)
        seen.add((p.sensor_fit, p.pixel_aspect_x > p.pixel_aspect_y, p.pixel_aspect_x < p.pixel_aspect_y))
        K, W, H = blender_intrinsics(p)
        pct = p.resolution_percentage
        expected = (p.resolution_x * pct // 100, p.resolution_y * pct // 100)
        assert expected == (W, H)
        ours, theirs = blender_pixels(scene, obj, K, W, H, rng)
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=REL_TOL * max(W, H, K[0, 0], K[1, 1]), err_msg=str(p))
    assert len(seen) == 9  # every fit met square, wide and tall pixels


def test_blender_params_from_intrinsics_reproduce_k_in_blender(scene_and_camera, rng):
    scene, obj = scene_and_camera
    for _ in range(12):
        W, H = int(rng.integers(16, 1500)), int(rng.integers(16, 1500))
        fx = float(rng.uniform(0.3, 3)) * max(W, H)
        fy = fx * float(rng.choice([1.0, rng.uniform(0.4, 2.5)]))
        K = np.array([[fx, 0, rng.uniform(0.2, 0.8) * W], [0, fy, rng.uniform(0.2, 0.8) * H], [0, 0, 1]])
        apply(scene, obj, blender_params_from_intrinsics(K, W, H), rng)
        ours, theirs = blender_pixels(scene, obj, K, W, H, rng)  # the original K against Blender
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=REL_TOL * max(W, H, K[0, 0], K[1, 1]))
