"""Camera maths at the Blender edge, numpy only (no bpy): what the add-on sends and what it keys.

Every formula lives in the vendored backend module `cameras` (Blender intrinsics from lens, sensor,
fit, shift, resolution, percentage and pixel aspect; OpenCV↔Blender axes; quaternions with sign
continuity); this file only arranges per-frame values into the arrays the protocol wants and back
into per-frame keyframe values. scene_io.py reads and writes the bpy side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._vendor import cameras as C

# Fields of cameras.BlenderCameraParams, read from Camera data (first six) and RenderSettings (rest).
CAMERA_FIELDS = ("lens", "sensor_width", "sensor_height", "sensor_fit", "shift_x", "shift_y")
RENDER_FIELDS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y")


def rigid(matrix_world: np.ndarray) -> np.ndarray:
    """matrix_world (..., 4, 4) without scale or shear: the rotation is the polar factor U·Vᵀ of the SVD.

    Blender's projection ignores object scale (it normalises the camera matrix), and float32 storage
    leaves rotations slightly off orthonormal; the polar factor is the nearest rotation to both.
    """
    M = np.array(matrix_world, dtype=np.float64)
    U, _, Vt = np.linalg.svd(M[..., :3, :3])
    R = U @ Vt
    flip = np.linalg.det(R) < 0  # a mirrored camera: keep a proper rotation
    if np.any(flip):
        U[flip, :, -1] *= -1
        R = U @ Vt
    M[..., :3, :3] = R
    M[..., 3, :] = (0.0, 0.0, 0.0, 1.0)
    return M


def export_track(settings: list[dict], matrices_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-frame Blender settings (dicts of CAMERA_FIELDS + RENDER_FIELDS) and matrix_world (F, 4, 4)
    → (K (F, 3, 3) continuous pixels, c2w (F, 4, 4) OpenCV axes, width, height).

    Raises ValueError when the frame count disagrees or the render size changes during the shot.
    """
    mw = np.asarray(matrices_world, dtype=np.float64)
    if mw.ndim != 3 or mw.shape[1:] != (4, 4) or len(settings) != mw.shape[0] or not len(settings):
        raise ValueError(f"matrices_world must be (F, 4, 4) with F = len(settings) = {len(settings)} > 0, "
                         f"got {mw.shape}")
    Ks, size = [], None
    for i, s in enumerate(settings):
        K, W, H = C.blender_intrinsics(C.BlenderCameraParams(**{k: s[k] for k in CAMERA_FIELDS + RENDER_FIELDS}))
        if size is not None and size != (W, H):
            raise ValueError(f"settings[{i}]: render size {W}x{H} differs from frame 0 {size[0]}x{size[1]}")
        size = (W, H)
        Ks.append(K)
    c2w = C.blender_to_opencv(rigid(mw))  # (F, 4, 4)
    C.Cameras(np.stack(Ks), c2w, *size)  # validates both
    return np.stack(Ks), c2w, size[0], size[1]


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K (..., 3, 3) for an image resized by (sx, sy): continuous pixels scale without a half-pixel term."""
    out = np.array(K, dtype=np.float64)
    out[..., 0, :] *= sx
    out[..., 1, :] *= sy
    return out


@dataclass
class CameraKeys:
    """Per-frame keyframe values that make a Blender camera reproduce (K, c2w) at width x height."""

    locations: np.ndarray  # (F, 3) matrix_world translation (scene units)
    quaternions: np.ndarray  # (F, 4) (w, x, y, z) Blender-axed rotations, signs continuous along F
    lens: np.ndarray  # (F,) mm, with sensor_fit 'HORIZONTAL'
    shift_x: np.ndarray  # (F,) fractions of the fitted width
    shift_y: np.ndarray  # (F,)
    sensor_width: float  # mm, constant over the shot
    sensor_height: float  # mm, only for the UI (the fit is horizontal)
    resolution_x: int  # render width in pixels at 100 %
    resolution_y: int  # render height
    pixel_aspect_x: float  # one pixel aspect for the shot (Blender keeps it on the scene)
    pixel_aspect_y: float


def keys_from_cameras(K: np.ndarray, c2w: np.ndarray, width: int, height: int,
                      sensor_width: float = 36.0) -> CameraKeys:
    """OpenCV cameras (K (F, 3, 3), c2w (F, 4, 4)) → keyframe values for one animated Blender camera.

    Blender keeps the pixel aspect on the scene, so fx/fy is taken from the median frame: exact when
    every frame shares it (any real camera), nearest otherwise.
    """
    cams = C.Cameras(K, c2w, int(width), int(height))
    ratio = cams.K[:, 0, 0] / cams.K[:, 1, 1]  # (F,)
    ref = int(np.argsort(ratio)[len(ratio) // 2])
    params = []
    for i in range(len(cams)):
        Ki = cams.K[i].copy()
        Ki[1, 1] = Ki[0, 0] / ratio[ref]  # the shot's aspect; fx and the principal point stay exact
        params.append(C.blender_params_from_intrinsics(Ki, cams.width, cams.height, sensor_width))
    gl = C.opencv_to_blender(cams.c2w)  # (F, 4, 4) Blender axes
    q = C.quaternion_sign_continuity(C.rotation_to_quaternion(gl[:, :3, :3]))  # (F, 4)
    p0 = params[ref]
    return CameraKeys(
        locations=gl[:, :3, 3].copy(), quaternions=q,
        lens=np.array([p.lens for p in params]), shift_x=np.array([p.shift_x for p in params]),
        shift_y=np.array([p.shift_y for p in params]), sensor_width=p0.sensor_width,
        sensor_height=p0.sensor_height, resolution_x=p0.resolution_x, resolution_y=p0.resolution_y,
        pixel_aspect_x=p0.pixel_aspect_x, pixel_aspect_y=p0.pixel_aspect_y)


def transforms_dict(K: np.ndarray, c2w: np.ndarray, width: int, height: int, file_paths: list[str],
                    extra: dict | None = None) -> dict:
    """nerfstudio transforms.json dict for results written beside their frames."""
    return C.cameras_to_transforms(C.Cameras(K, c2w, int(width), int(height)), file_paths, extra)


def cameras_from_transforms(d: dict) -> tuple[np.ndarray, np.ndarray, int, int, list[str]]:
    """transforms.json dict → (K (F, 3, 3), c2w (F, 4, 4) OpenCV, width, height, file paths)."""
    cams, paths = C.cameras_from_transforms(d)
    return cams.K, cams.c2w, cams.width, cams.height, paths
