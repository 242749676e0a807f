"""Camera conventions in one place: the backend's cameras and every conversion at its edges.

Inside the backend a camera is OpenCV-axed (x right, y down, z forward), with intrinsics `K` in
pixels and a camera-to-world 4x4 pose. Pixel coordinates are *continuous*: the centre of pixel row i,
column j is (j + 0.5, i + 0.5), as in Blender and nerfstudio, so a centred camera has cx = W/2
(see projection.py). The edges are:

- OpenCV (`cv2.projectPoints`): integer pixel centres, so the principal point moves by half a pixel.
- Blender: the camera looks down −Z with +Y up (the OpenGL camera), and intrinsics come from lens,
  sensor, sensor fit, shift, resolution, resolution percentage and pixel aspect.
- nerfstudio's `transforms.json`: `fl_x, fl_y, cx, cy, w, h` and per-frame OpenGL camera-to-world.
- Quaternions (w, x, y, z) for keyframing rotations in the add-on.

This file imports only numpy and the standard library: the Blender add-on vendors it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# Rotations are accepted when ‖RᵀR − I‖∞ is below this (float32 matrices from Blender pass).
ORTHO_TOL = 1e-6
# OpenCV camera axes → Blender/OpenGL camera axes: x stays, y and z flip. Its own inverse.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


def _finite(name: str, a: np.ndarray) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")


@dataclass
class Cameras:
    """A batch of N pinhole cameras sharing one image size (continuous pixels, OpenCV axes)."""

    K: np.ndarray  # (N, 3, 3) float64 intrinsics in pixels, upper-triangular, K[2] = [0, 0, 1]
    c2w: np.ndarray  # (N, 4, 4) float64 camera-to-world, OpenCV axes (x right, y down, z forward)
    width: int  # image width W in pixels
    height: int  # image height H in pixels

    def __post_init__(self) -> None:
        self.K = np.array(self.K, dtype=np.float64)  # copy: callers keep their arrays
        self.c2w = np.array(self.c2w, dtype=np.float64)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        K, c2w = self.K, self.c2w
        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise ValueError(f"K must have shape (N, 3, 3), got {K.shape}")
        if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
            raise ValueError(f"c2w must have shape (N, 4, 4), got {c2w.shape}")
        if K.shape[0] != c2w.shape[0]:
            raise ValueError(f"K has {K.shape[0]} cameras but c2w has {c2w.shape[0]}")
        _finite("K", K)
        _finite("c2w", c2w)
        if np.any(K[:, 0, 0] <= 0) or np.any(K[:, 1, 1] <= 0):
            raise ValueError("K focal lengths fx, fy must be > 0")
        lower = np.stack([K[:, 1, 0], K[:, 2, 0], K[:, 2, 1], K[:, 2, 2] - 1.0], axis=-1)
        if np.any(lower != 0):
            raise ValueError("K must be upper-triangular with K[2] = [0, 0, 1]")
        _check_rigid("c2w", c2w)
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def __len__(self) -> int:
        return self.K.shape[0]

    def __getitem__(self, idx: int | slice | np.ndarray | list[int]) -> Cameras:
        """Select cameras; an int keeps the batch axis (a Cameras of length 1)."""
        if isinstance(idx, int | np.integer):
            idx = slice(int(idx), int(idx) + 1 if int(idx) != -1 else None)
        return Cameras(self.K[idx], self.c2w[idx], self.width, self.height)


def _check_rigid(name: str, T: np.ndarray) -> None:
    """Rotation block orthonormal with det +1 and last row [0, 0, 0, 1]; T: (N, 4, 4)."""
    R = T[:, :3, :3]
    err = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max(initial=0.0)
    if err > ORTHO_TOL:
        raise ValueError(f"{name} rotation is not orthonormal (max |RᵀR − I| = {err:.2e})")
    if np.any(np.linalg.det(R) <= 0):
        raise ValueError(f"{name} rotation has det != +1 (a reflection)")
    if np.any(T[:, 3] != np.array([0.0, 0.0, 0.0, 1.0])):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1]")


# ----------------------------------------------------------------------------- OpenCV edge


def K_to_opencv(K: np.ndarray) -> np.ndarray:  # noqa: N802 (K is the field's name)
    """Continuous-pixel K → OpenCV K (pixel centres at integers): principal point − 0.5. (..., 3, 3)."""
    out = np.array(K, dtype=np.float64)
    out[..., 0:2, 2] -= 0.5
    return out


def K_from_opencv(K: np.ndarray) -> np.ndarray:  # noqa: N802
    """OpenCV K (integer pixel centres) → continuous-pixel K: principal point + 0.5. (..., 3, 3)."""
    out = np.array(K, dtype=np.float64)
    out[..., 0:2, 2] += 0.5
    return out


def opencv_extrinsics(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world (4, 4) or (N, 4, 4) → world-to-camera Rodrigues `rvec` and `tvec` (…, 3).

    The axis-angle comes from the quaternion (angle = 2·atan2(‖v‖, w) with w ≥ 0), which stays
    accurate near 0 and π where the trace formula loses digits.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    R = c2w[..., :3, :3]
    Rw = np.swapaxes(R, -1, -2)  # world-to-camera rotation
    tvec = -np.einsum("...ij,...j->...i", Rw, c2w[..., :3, 3])
    q = rotation_to_quaternion(Rw.reshape(-1, 3, 3))  # (M, 4), w ≥ 0
    vnorm = np.linalg.norm(q[:, 1:], axis=-1)
    angle = 2.0 * np.arctan2(vnorm, q[:, 0])
    scale = np.where(vnorm > 0, angle / np.where(vnorm > 0, vnorm, 1.0), 2.0)  # small-angle limit
    rvec = (q[:, 1:] * scale[:, None]).reshape(tvec.shape)
    return rvec, tvec


# ----------------------------------------------------------------------------- Blender edge


def opencv_to_blender(c2w: np.ndarray) -> np.ndarray:
    """OpenCV-axed camera-to-world → Blender/OpenGL-axed (camera looks down −Z, +Y up). (..., 4, 4)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def blender_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """Blender/OpenGL-axed camera-to-world (e.g. `matrix_world`) → OpenCV-axed. (..., 4, 4)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


@dataclass
class BlenderCameraParams:
    """The Blender camera and render settings that fix a perspective camera's intrinsics."""

    lens: float = 50.0  # focal length in mm (Camera.lens)
    sensor_width: float = 36.0  # mm (Camera.sensor_width)
    sensor_height: float = 24.0  # mm, used only with sensor_fit='VERTICAL' (Camera.sensor_height)
    sensor_fit: str = "AUTO"  # 'AUTO' | 'HORIZONTAL' | 'VERTICAL' (Camera.sensor_fit)
    shift_x: float = 0.0  # in units of the fitted image dimension (Camera.shift_x)
    shift_y: float = 0.0  # likewise, +y moves the frame up (Camera.shift_y)
    resolution_x: int = 1920  # RenderSettings.resolution_x
    resolution_y: int = 1080  # RenderSettings.resolution_y
    resolution_percentage: int = 100  # RenderSettings.resolution_percentage
    pixel_aspect_x: float = 1.0  # RenderSettings.pixel_aspect_x
    pixel_aspect_y: float = 1.0  # RenderSettings.pixel_aspect_y

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        for name in ("lens", "sensor_width", "sensor_height", "pixel_aspect_x", "pixel_aspect_y"):
            v = getattr(self, name)
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        for name in ("shift_x", "shift_y"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        for name in ("resolution_x", "resolution_y", "resolution_percentage"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.sensor_fit not in SENSOR_FITS:
            raise ValueError(f"sensor_fit must be one of {SENSOR_FITS}, got {self.sensor_fit!r}")


def blender_intrinsics(params: BlenderCameraParams) -> tuple[np.ndarray, int, int]:
    """Blender camera settings → (K (3, 3) in continuous pixels, width, height) of the render.

    Follows Blender's view-plane computation (BKE_camera_params_compute_viewplane). The rendered size
    is resolution × percentage / 100 (integer division, as Blender's render does). Measured in
    "physical" units where a pixel is px wide and py tall, the fitted dimension is
    D = W·px (HORIZONTAL), H·py (VERTICAL) or the larger of the two (AUTO); the fitted sensor size S
    is sensor_height for VERTICAL and sensor_width otherwise; the focal length is F = lens/S·D and
    shifts are fractions of D. Back in pixels:
        fx = F/px, fy = F/py, cx = W/2 − shift_x·D/px, cy = H/2 + shift_y·D/py  (image y points down).
    """
    p = params
    p.validate()
    W = p.resolution_x * p.resolution_percentage // 100
    H = p.resolution_y * p.resolution_percentage // 100
    if W <= 0 or H <= 0:
        raise ValueError(f"resolution_percentage {p.resolution_percentage} gives an empty image")
    px, py = float(p.pixel_aspect_x), float(p.pixel_aspect_y)
    fit = p.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if W * px >= H * py else "VERTICAL"  # ties go horizontal, as in Blender
    D = W * px if fit == "HORIZONTAL" else H * py
    S = p.sensor_height if p.sensor_fit == "VERTICAL" else p.sensor_width  # AUTO always uses width
    F = p.lens / S * D
    K = np.array([[F / px, 0.0, W / 2 - p.shift_x * D / px], [0.0, F / py, H / 2 + p.shift_y * D / py], [0, 0, 1.0]])
    return K, W, H


def blender_params_from_intrinsics(
    K: np.ndarray, width: int, height: int, sensor_width: float = 36.0
) -> BlenderCameraParams:
    """A Blender camera whose render reproduces K (3, 3) at width x height exactly.

    Uses sensor_fit='HORIZONTAL' (so D = W·px whatever the aspect) and 100 %. fx ≠ fy is expressed by
    the pixel aspect, keeping both aspects ≥ 1 as Blender requires: fx/fy = py/px.
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    Cameras(K[None], np.eye(4)[None], width, height)  # validates K, width, height
    if K[0, 1] != 0:
        raise ValueError(f"K skew K[0, 1] = {K[0, 1]} cannot be expressed by a Blender camera")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    px, py = (1.0, fx / fy) if fx >= fy else (fy / fx, 1.0)
    D = width * px
    return BlenderCameraParams(
        lens=float(fx * px * sensor_width / D),
        sensor_width=float(sensor_width),
        sensor_height=float(sensor_width * height / width),  # unused by the fit; keeps the UI sane
        sensor_fit="HORIZONTAL",
        shift_x=float((width / 2 - cx) * px / D),
        shift_y=float((cy - height / 2) * py / D),
        resolution_x=int(width),
        resolution_y=int(height),
        resolution_percentage=100,
        pixel_aspect_x=float(px),
        pixel_aspect_y=float(py),
    )


# ----------------------------------------------------------------------------- transforms.json edge

_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy")


def cameras_to_transforms(cams: Cameras, file_paths: list[str], extra: dict | None = None) -> dict:
    """Cameras → a nerfstudio `transforms.json` dict (continuous pixels, OpenGL camera-to-world).

    Intrinsics go to the top level when every frame shares them and into each frame otherwise.
    `extra` adds top-level keys (e.g. a depth scale) but may not overwrite the camera keys.
    """
    if len(file_paths) != len(cams):
        raise ValueError(f"file_paths has {len(file_paths)} entries but there are {len(cams)} cameras")
    if np.any(cams.K[:, 0, 1] != 0):
        raise ValueError("K skew K[0, 1] must be 0: transforms.json has no skew")
    intr = np.stack([cams.K[:, 0, 0], cams.K[:, 1, 1], cams.K[:, 0, 2], cams.K[:, 1, 2]], axis=-1)  # (N, 4)
    shared = bool(np.all(intr == intr[:1]))
    out: dict[str, Any] = {"w": int(cams.width), "h": int(cams.height)}
    if shared:
        out.update({k: float(v) for k, v in zip(_INTRINSIC_KEYS, intr[0])})
    gl = opencv_to_blender(cams.c2w)  # (N, 4, 4)
    frames = []
    for i, path in enumerate(file_paths):
        frame: dict[str, Any] = {"file_path": str(path), "transform_matrix": gl[i].tolist()}
        if not shared:
            frame.update({k: float(v) for k, v in zip(_INTRINSIC_KEYS, intr[i])})
        frames.append(frame)
    out["frames"] = frames
    for key, value in (extra or {}).items():
        if key in out or key in _INTRINSIC_KEYS:
            raise ValueError(f"extra key {key!r} would overwrite a camera key")
        out[key] = value
    return out


def _number(d: dict, key: str, where: str) -> float:
    """d[key] as a finite float, with a ValueError naming `where.key` otherwise."""
    try:
        v = float(d[key])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}{key} must be a number, got {d[key]!r}") from e
    if not math.isfinite(v):
        raise ValueError(f"{where}{key} is not finite ({v})")
    return v


def _lookup(frame: dict, top: dict, key: str, i: int) -> float | None:
    """A per-frame value overriding the top-level one (nerfstudio's rule); None where neither has it."""
    if key in frame:
        return _number(frame, key, f"frames[{i}].")
    if key in top:
        return _number(top, key, "")
    return None


def _frame_size(frame: dict, d: dict, i: int) -> tuple[int, int]:
    size = []
    for key in ("w", "h"):
        v = _lookup(frame, d, key, i)
        if v is None:
            raise ValueError(f"transforms is missing '{key}' (image {'width' if key == 'w' else 'height'})")
        if v != int(v) or v <= 0:
            raise ValueError(f"'{key}' must be a positive integer, got {v}")
        size.append(int(v))
    return size[0], size[1]


def _frame_intrinsics(frame: dict, d: dict, i: int, w: int, h: int) -> np.ndarray:
    """Intrinsics of frame i; `camera_angle_x` (NeRF-synthetic) stands in for a missing fl_x."""
    fx = _lookup(frame, d, "fl_x", i)
    if fx is None:
        angle = _lookup(frame, d, "camera_angle_x", i)
        if angle is None:
            raise ValueError(f"frames[{i}] has no focal length: missing 'fl_x' and 'camera_angle_x'")
        fx = 0.5 * w / math.tan(0.5 * angle)
    fy = _lookup(frame, d, "fl_y", i)
    if fy is None:
        angle_y = _lookup(frame, d, "camera_angle_y", i)
        fy = fx if angle_y is None else 0.5 * h / math.tan(0.5 * angle_y)
    cx, cy = _lookup(frame, d, "cx", i), _lookup(frame, d, "cy", i)
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _frame_pose(frame: dict, i: int) -> np.ndarray:
    """frames[i].transform_matrix (4x4, or 3x4 completed) in OpenGL axes → OpenCV axes."""
    if "transform_matrix" not in frame:
        raise ValueError(f"frames[{i}] is missing 'transform_matrix'")
    try:
        T = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"frames[{i}].transform_matrix is not a numeric matrix") from e
    if T.shape == (3, 4):
        T = np.concatenate([T, [[0.0, 0.0, 0.0, 1.0]]], axis=0)
    if T.shape != (4, 4):
        raise ValueError(f"frames[{i}].transform_matrix must be 4x4 (or 3x4), got shape {T.shape}")
    _finite(f"frames[{i}].transform_matrix", T)
    _check_rigid(f"frames[{i}].transform_matrix", T[None])
    return blender_to_opencv(T)


def cameras_from_transforms(d: dict) -> tuple[Cameras, list[str]]:
    """A nerfstudio / NeRF-synthetic `transforms.json` dict → (Cameras, file paths).

    Intrinsics may be shared (top level) or per frame; a frame's own key wins. Every frame must have
    the same size because Cameras holds one width and height.
    """
    frames = d.get("frames") if isinstance(d, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError("transforms 'frames' must be a non-empty list")
    Ks, poses, paths = [], [], []
    size = None
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise ValueError(f"frames[{i}] must be an object")
        if "file_path" not in frame:
            raise ValueError(f"frames[{i}] is missing 'file_path'")
        wh = _frame_size(frame, d, i)
        if size is not None and wh != size:
            raise ValueError(f"frames[{i}] size (w, h) = {wh} differs from frames[0] {size}")
        size = wh
        Ks.append(_frame_intrinsics(frame, d, i, *wh))
        poses.append(_frame_pose(frame, i))
        paths.append(str(frame["file_path"]))
    return Cameras(np.stack(Ks), np.stack(poses), size[0], size[1]), paths


# ----------------------------------------------------------------------------- quaternions


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) → unit quaternions (N, 4) as (w, x, y, z) with w ≥ 0.

    Shepperd's method in Markley's form ("Unit quaternion from rotation matrix", JGCD 2008): of the
    four ways to read q from R, use the one built on the largest of (trace, R00, R11, R22), so the
    divisor is never small; the result is then normalised, which also absorbs slight non-orthogonality.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"R must have shape (N, 3, 3), got {R.shape}")
    _finite("R", R)
    r00, r11, r22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    tr = r00 + r11 + r22
    a, b, c = R[:, 2, 1] - R[:, 1, 2], R[:, 0, 2] - R[:, 2, 0], R[:, 1, 0] - R[:, 0, 1]  # 4w·(x, y, z)
    s01, s02, s12 = R[:, 0, 1] + R[:, 1, 0], R[:, 0, 2] + R[:, 2, 0], R[:, 1, 2] + R[:, 2, 1]
    cand = np.stack(
        [
            np.stack([1 + tr, a, b, c], -1),
            np.stack([a, 1 + 2 * r00 - tr, s01, s02], -1),
            np.stack([b, s01, 1 + 2 * r11 - tr, s12], -1),
            np.stack([c, s02, s12, 1 + 2 * r22 - tr], -1),
        ],
        axis=1,
    )  # (N, 4 candidates, 4)
    pick = np.argmax(np.stack([tr, r00, r11, r22], -1), axis=-1)  # (N,)
    q = cand[np.arange(R.shape[0]), pick]  # (N, 4)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def quaternion_to_rotation(q: np.ndarray) -> np.ndarray:
    """Quaternions (N, 4) as (w, x, y, z), normalised first → rotation matrices (N, 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"q must have shape (N, 4), got {q.shape}")
    _finite("q", q)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("q has a zero quaternion")
    w, x, y, z = (q / n).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )  # (N, 3, 3)


def quaternion_sign_continuity(q: np.ndarray) -> np.ndarray:
    """Flip signs along a sequence (N, 4) so consecutive quaternions have a non-negative dot product.

    q and −q are the same rotation, but keyframe interpolation between them takes the long way
    round. Each key's flip is the running product of the signs of the original neighbour dots.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"q must have shape (N, 4), got {q.shape}")
    _finite("q", q)
    dots = np.einsum("ni,ni->n", q[1:], q[:-1])  # (N-1,)
    flips = np.cumprod(np.where(dots < 0, -1.0, 1.0))
    return q * np.concatenate([[1.0], flips])[:, None]
