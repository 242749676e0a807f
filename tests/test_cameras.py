"""Camera conventions against independent oracles: OpenCV's projectPoints/Rodrigues, scipy's rotations,
hand-derived Blender intrinsics and property-based round trips (Blender itself: test_cameras_blender.py)."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from backend.geometry.cameras import (
    BlenderCameraParams,
    Cameras,
    K_from_opencv,
    K_to_opencv,
    blender_intrinsics,
    blender_params_from_intrinsics,
    blender_to_opencv,
    cameras_from_transforms,
    cameras_to_transforms,
    opencv_extrinsics,
    opencv_to_blender,
    quaternion_sign_continuity,
    quaternion_to_rotation,
    rotation_to_quaternion,
)
from backend.geometry.projection import pixel_centres, project_points, unproject_depth


def random_cameras(rng: np.random.Generator, n: int, width: int = 64, height: int = 48) -> Cameras:
    """Valid cameras: scipy-uniform rotations, focals 20–200 px, principal points anywhere in the image."""
    K = np.tile(np.eye(3), (n, 1, 1))
    K[:, 0, 0], K[:, 1, 1] = rng.uniform(20, 200, n), rng.uniform(20, 200, n)
    K[:, 0, 2], K[:, 1, 2] = rng.uniform(0, width, n), rng.uniform(0, height, n)
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 3
    return Cameras(K, c2w, width, height)


def points_in_front(rng: np.random.Generator, cams: Cameras, m: int) -> np.ndarray:
    """World points (N, m, 3) at depth 0.5–20 inside a generous cone in front of every camera."""
    cam = np.concatenate([rng.uniform(-1, 1, (len(cams), m, 2)), np.ones((len(cams), m, 1))], -1)
    cam *= rng.uniform(0.5, 20, (len(cams), m, 1))
    return np.einsum("nij,nmj->nmi", cams.c2w[:, :3, :3], cam) + cams.c2w[:, None, :3, 3]


def ours(cams: Cameras, pts: np.ndarray) -> np.ndarray:
    t = [torch.from_numpy(a) for a in (pts, cams.K, cams.c2w)]
    return project_points(*t)[0].numpy()  # (N, m, 2)


# ----------------------------------------------------------------------------- OpenCV oracle


def test_projection_matches_cv2_project_points(rng):
    cams = random_cameras(rng, 12)
    pts = points_in_front(rng, cams, 50)
    uv = ours(cams, pts)
    for i in range(len(cams)):
        rvec, tvec = opencv_extrinsics(cams.c2w[i])
        ref, _ = cv2.projectPoints(pts[i], rvec, tvec, K_to_opencv(cams.K[i]), None)
        # OpenCV's pixel j sits where the continuous convention has j + 0.5.
        np.testing.assert_allclose(uv[i], ref[:, 0] + 0.5, rtol=0, atol=1e-8)


def test_continuous_pixel_centres_land_on_opencv_integers(rng):
    """Lift every pixel centre (j + 0.5, i + 0.5) to 3D; OpenCV must see it at the integer (j, i)."""
    cams = random_cameras(rng, 2, width=7, height=5)
    depth = torch.from_numpy(rng.uniform(1, 5, (2, 5, 7)))
    X = unproject_depth(depth, torch.from_numpy(cams.K), torch.from_numpy(cams.c2w)).numpy()  # (2, 5, 7, 3)
    ij = pixel_centres(5, 7, torch.float64).numpy() - 0.5  # (5, 7, 2) integer grid
    for i in range(2):
        rvec, tvec = opencv_extrinsics(cams.c2w[i])
        ref, _ = cv2.projectPoints(X[i].reshape(-1, 3), rvec, tvec, K_to_opencv(cams.K[i]), None)
        np.testing.assert_allclose(ref[:, 0], ij.reshape(-1, 2), atol=1e-9)


def test_rvec_matches_cv2_rodrigues_including_near_pi(rng):
    angles = np.array([0.0, 1e-9, 1e-4, 1.0, math.pi - 1e-7, math.pi])
    axes = rng.normal(size=(len(angles), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    c2w = np.tile(np.eye(4), (len(angles), 1, 1))
    c2w[:, :3, :3] = Rotation.from_rotvec(axes * angles[:, None]).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(len(angles), 3))
    rvec, tvec = opencv_extrinsics(c2w)
    for i in range(len(angles)):
        R_w2c, _ = cv2.Rodrigues(rvec[i])
        np.testing.assert_allclose(R_w2c, c2w[i, :3, :3].T, atol=1e-12)
        np.testing.assert_allclose(tvec[i], -c2w[i, :3, :3].T @ c2w[i, :3, 3], atol=1e-12)
    assert np.linalg.norm(rvec[-1]) == pytest.approx(math.pi)


def test_k_opencv_shift_is_half_pixel_and_inverse():
    K = np.array([[100.0, 0.5, 32.0], [0, 90.0, 24.0], [0, 0, 1]])
    np.testing.assert_array_equal(K_to_opencv(K)[:2, 2], [31.5, 23.5])
    np.testing.assert_array_equal(K_to_opencv(K)[:2, :2], K[:2, :2])
    np.testing.assert_array_equal(K_from_opencv(K_to_opencv(K)), K)
    assert K[0, 2] == 32.0  # inputs are not modified


# ----------------------------------------------------------------------------- axes


def test_blender_axes_known_answer():
    """An OpenCV camera at the identity looks down +Z with y down; in Blender axes that is the camera
    rotated 180° about x: its local −Z (view) is world +Z and its local +Y (up) is world −Y."""
    gl = opencv_to_blender(np.eye(4))
    np.testing.assert_array_equal(gl, np.diag([1.0, -1.0, -1.0, 1.0]))
    # Blender's default orientation (rotation 0) looks down world −Z with world +Y up.
    cv = blender_to_opencv(np.eye(4))
    np.testing.assert_array_equal(cv[:3, 2], [0, 0, -1])  # forward
    np.testing.assert_array_equal(cv[:3, 1], [0, -1, 0])  # image down


# ----------------------------------------------------------------------------- Blender intrinsics


def test_blender_intrinsics_known_answers():
    # Blender's default camera: 50 mm on a 36 mm sensor, 1920x1080 → f = 50/36·1920.
    K, W, H = blender_intrinsics(BlenderCameraParams())
    assert (W, H) == (1920, 1080)
    np.testing.assert_allclose(K, [[50 / 36 * 1920, 0, 960], [0, 50 / 36 * 1920, 540], [0, 0, 1]])
    # Portrait + AUTO: the sensor width spans the height; 50 % halves the image; shift in units of H.
    p = BlenderCameraParams(resolution_x=600, resolution_y=800, resolution_percentage=50, shift_x=0.1, shift_y=-0.2)
    K, W, H = blender_intrinsics(p)
    assert (W, H) == (300, 400)
    np.testing.assert_allclose(K, [[50 / 36 * 400, 0, 150 - 40], [0, 50 / 36 * 400, 200 - 80], [0, 0, 1]])
    # VERTICAL uses sensor_height over H even for a landscape image.
    K, _, _ = blender_intrinsics(BlenderCameraParams(sensor_fit="VERTICAL", sensor_height=20.0))
    assert K[0, 0] == pytest.approx(50 / 20 * 1080)
    # Pixel aspect 2:1 (wide pixels): 100 pixels cover 200 physical units, so fy = 2·fx.
    p = BlenderCameraParams(resolution_x=100, resolution_y=100, pixel_aspect_x=2.0, sensor_fit="HORIZONTAL")
    K, _, _ = blender_intrinsics(p)
    assert K[1, 1] == pytest.approx(2 * K[0, 0]) and K[0, 0] == pytest.approx(50 / 36 * 100)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.2, 5.0), st.floats(0.2, 5.0), st.floats(0.1, 10.0), st.sampled_from(["AUTO", "HORIZONTAL", "VERTICAL"])
)
def test_blender_intrinsics_depend_only_on_pixel_aspect_ratio(px, py, scale, fit):
    """Blender's pixel aspect is a ratio: scaling both values together changes nothing."""
    base = dict(resolution_x=320, resolution_y=200, shift_x=0.1, shift_y=0.05, sensor_fit=fit)
    K1, *_ = blender_intrinsics(BlenderCameraParams(**base, pixel_aspect_x=px, pixel_aspect_y=py))
    K2, *_ = blender_intrinsics(BlenderCameraParams(**base, pixel_aspect_x=px * scale, pixel_aspect_y=py * scale))
    np.testing.assert_allclose(K1, K2, rtol=1e-12)


# ----------------------------------------------------------------------------- round trips

unit = st.floats(-1.0, 1.0)
quat = st.tuples(unit, unit, unit, unit).filter(lambda q: np.linalg.norm(q) > 0.1)


@st.composite
def camera_batches(draw):
    """1–4 cameras sharing a random size, with random rotations, focals and principal points."""
    n = draw(st.integers(1, 4))
    W, H = draw(st.integers(1, 4096)), draw(st.integers(1, 4096))
    qs = np.array([draw(quat) for _ in range(n)])
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = quaternion_to_rotation(qs)
    c2w[:, :3, 3] = [draw(st.tuples(*[st.floats(-1e3, 1e3)] * 3)) for _ in range(n)]
    K = np.tile(np.eye(3), (n, 1, 1))
    for i in range(n):
        K[i, 0, 0], K[i, 1, 1] = draw(st.floats(1.0, 1e4)), draw(st.floats(1.0, 1e4))
        K[i, 0, 2], K[i, 1, 2] = draw(st.floats(-W, 2 * W)), draw(st.floats(-H, 2 * H))
    if draw(st.booleans()):
        K[:] = K[0]  # shared intrinsics
    return Cameras(K, c2w, W, H)


@settings(max_examples=60, deadline=None)
@given(camera_batches())
def test_round_trip_blender_opencv_transforms(cams):
    np.testing.assert_array_equal(blender_to_opencv(opencv_to_blender(cams.c2w)), cams.c2w)
    paths = [f"images/{i:04d}.png" for i in range(len(cams))]
    d = json.loads(json.dumps(cameras_to_transforms(cams, paths, extra={"depth_scale": 2.5})))
    shared = bool(np.all(cams.K[0] == cams.K))
    assert ("fl_x" in d) == shared and ("fl_x" in d["frames"][0]) == (not shared)
    assert d["depth_scale"] == 2.5 and (d["w"], d["h"]) == (cams.width, cams.height)
    back, back_paths = cameras_from_transforms(d)
    assert back_paths == paths and (back.width, back.height) == (cams.width, cams.height)
    np.testing.assert_allclose(back.K, cams.K, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(back.c2w, cams.c2w, rtol=1e-9, atol=1e-9)
    # The stored matrix is OpenGL-axed: the camera looks down its −Z column.
    np.testing.assert_allclose(np.array(d["frames"][0]["transform_matrix"])[:3, 2], -cams.c2w[0, :3, 2])


@settings(max_examples=60, deadline=None)
@given(camera_batches())
def test_blender_params_from_intrinsics_round_trip(cams):
    K = cams.K[0]
    p = blender_params_from_intrinsics(K, cams.width, cams.height)
    assert min(p.pixel_aspect_x, p.pixel_aspect_y) == 1.0  # Blender wants both ≥ 1
    K2, W, H = blender_intrinsics(p)
    assert (cams.width, cams.height) == (W, H)
    np.testing.assert_allclose(K2, K, rtol=1e-9, atol=1e-9)


def test_nerf_synthetic_camera_angle_x():
    """The NeRF-synthetic Lego scene's camera_angle_x at 800x800 is the well-known f ≈ 1111.111 px."""
    d = {
        "camera_angle_x": 0.6911112070083618,
        "w": 800,
        "h": 800,
        "frames": [{"file_path": "./train/r_0", "rotation": 0.0, "transform_matrix": np.eye(4).tolist()}],
    }
    cams, paths = cameras_from_transforms(d)
    np.testing.assert_allclose(cams.K[0], [[1111.1110311937682, 0, 400], [0, 1111.1110311937682, 400], [0, 0, 1]])
    assert paths == ["./train/r_0"]


def test_per_frame_keys_override_shared_ones():
    d = {
        "fl_x": 100.0,
        "fl_y": 110.0,
        "cx": 5.0,
        "cy": 6.0,
        "w": 10,
        "h": 12,
        "frames": [
            {"file_path": "a", "transform_matrix": np.eye(4).tolist()},
            {"file_path": "b", "fl_x": 50.0, "cy": 7.0, "transform_matrix": np.eye(4)[:3].tolist()},
        ],
    }
    cams, _ = cameras_from_transforms(d)
    np.testing.assert_array_equal(cams.K[:, 0, 0], [100, 50])
    np.testing.assert_array_equal(cams.K[:, 1, 1], [110, 110])
    np.testing.assert_array_equal(cams.K[:, 1, 2], [6, 7])
    np.testing.assert_array_equal(cams.c2w[1], np.diag([1.0, -1.0, -1.0, 1.0]))


def test_len_and_getitem(rng):
    cams = random_cameras(rng, 5)
    assert len(cams) == 5 and len(cams[1:4]) == 3 and len(cams[-1]) == 1
    np.testing.assert_array_equal(cams[-1].K[0], cams.K[4])
    np.testing.assert_array_equal(cams[[0, 2]].c2w, cams.c2w[[0, 2]])
    assert isinstance(cams[2:], Cameras) and cams[2:].width == cams.width


# ----------------------------------------------------------------------------- quaternions


def test_quaternions_match_scipy_and_round_trip(rng):
    rots = Rotation.random(500, random_state=1)
    # Add the hard cases: identity and half-turns about each axis and a diagonal (trace = −1).
    extra = Rotation.from_rotvec(
        math.pi * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0] / np.sqrt(2)])
    )
    R = np.concatenate([rots.as_matrix(), extra.as_matrix()])
    q = rotation_to_quaternion(R)
    ref = Rotation.from_matrix(R).as_quat()[:, [3, 0, 1, 2]]  # scipy is xyzw
    ref *= np.where(np.abs(np.einsum("ni,ni->n", ref, q)) > 0, np.sign(np.einsum("ni,ni->n", ref, q)), 1)[:, None]
    np.testing.assert_allclose(q, ref, atol=1e-12)
    assert np.all(q[:, 0] >= 0)
    np.testing.assert_allclose(quaternion_to_rotation(q), R, atol=1e-12)
    # 90° about z: (cos 45°, 0, 0, sin 45°).
    Rz = np.array([[[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]])
    np.testing.assert_allclose(rotation_to_quaternion(Rz), [[math.sqrt(0.5), 0, 0, math.sqrt(0.5)]], atol=1e-15)


def test_quaternion_sign_continuity(rng):
    # A slow spin through several full turns, with signs scrambled as a naive exporter would leave them.
    angles = np.linspace(0, 6 * math.pi, 200)
    q = np.stack([np.cos(angles / 2), np.zeros_like(angles), np.sin(angles / 2), np.zeros_like(angles)], -1)
    scrambled = q * rng.choice([-1.0, 1.0], size=(200, 1))
    out = quaternion_sign_continuity(scrambled)
    assert np.all(np.einsum("ni,ni->n", out[1:], out[:-1]) >= 0)
    np.testing.assert_array_equal(out[0], scrambled[0])
    np.testing.assert_array_equal(np.abs(out), np.abs(scrambled))  # only signs change
    np.testing.assert_allclose(quaternion_to_rotation(out), quaternion_to_rotation(scrambled), atol=1e-14)
    # The smooth input needs no change, except for a global sign set by the first key.
    np.testing.assert_allclose(out, q * np.sign(scrambled[0, 0] / q[0, 0]), atol=1e-15)


# ----------------------------------------------------------------------------- errors


def _valid() -> dict:
    return dict(K=np.array([[[50.0, 0, 32], [0, 50, 24], [0, 0, 1]]]), c2w=np.eye(4)[None], width=64, height=48)


def _edit(field, fn):
    kw = _valid()
    kw[field] = fn(kw[field]) if callable(fn) else fn
    return kw


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        (_edit("K", lambda K: K.__setitem__((0, 0, 2), np.nan) or K), "K"),
        (_edit("c2w", lambda T: T.__setitem__((0, 1, 3), np.inf) or T), "c2w"),
        (_edit("K", np.eye(3)), "K"),
        (_edit("c2w", np.eye(4)[None, :3]), "c2w"),
        (_edit("c2w", np.diag([1.0, 1.0, 1.001, 1.0])[None]), "c2w"),
        (_edit("c2w", np.diag([1.0, 1.0, -1.0, 1.0])[None]), "c2w"),
        (_edit("c2w", lambda T: T.__setitem__((0, 3, 0), 0.1) or T), "c2w"),
        (_edit("K", lambda K: K.__setitem__((0, 0, 0), 0.0) or K), "K"),
        (_edit("K", lambda K: K.__setitem__((0, 1, 1), -5.0) or K), "K"),
        (_edit("K", lambda K: K.__setitem__((0, 2, 0), 0.1) or K), "K"),
        (_edit("width", 0), "width"),
        (_edit("height", -3), "height"),
        (_edit("width", 64.0), "width"),
        (_edit("c2w", np.eye(4)[None].repeat(2, 0)), "c2w"),
    ],
)
def test_cameras_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        Cameras(**kw)


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"lens": 0.0}, "lens"),
        ({"sensor_width": float("nan")}, "sensor_width"),
        ({"sensor_fit": "FILL"}, "sensor_fit"),
        ({"shift_x": float("inf")}, "shift_x"),
        ({"resolution_y": 0}, "resolution_y"),
        ({"resolution_percentage": -1}, "resolution_percentage"),
        ({"pixel_aspect_y": 0.0}, "pixel_aspect_y"),
    ],
)
def test_blender_params_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        BlenderCameraParams(**kw)


def test_blender_params_from_intrinsics_rejects_skew_and_bad_sizes():
    K = np.array([[50.0, 0.1, 32], [0, 50, 24], [0, 0, 1]])
    with pytest.raises(ValueError, match="skew"):
        blender_params_from_intrinsics(K, 64, 48)
    K[0, 1] = 0
    with pytest.raises(ValueError, match="height"):
        blender_params_from_intrinsics(K, 64, 0)
    with pytest.raises(ValueError, match="percentage"):
        blender_intrinsics(BlenderCameraParams(resolution_x=1, resolution_percentage=1))


def _transforms() -> dict:
    return {
        "fl_x": 50.0,
        "fl_y": 50.0,
        "cx": 32.0,
        "cy": 24.0,
        "w": 64,
        "h": 48,
        "frames": [
            {"file_path": "a.png", "transform_matrix": np.eye(4).tolist()},
            {"file_path": "b.png", "transform_matrix": np.eye(4).tolist()},
        ],
    }


def _drop(key, frame=None):
    d = _transforms()
    del (d if frame is None else d["frames"][frame])[key]
    return d


def _put(key, value, frame=None):
    d = _transforms()
    (d if frame is None else d["frames"][frame])[key] = value
    return d


@pytest.mark.parametrize(
    ("d", "match"),
    [
        (_drop("w"), "'w'"),
        (_drop("h"), "'h'"),
        (_drop("frames"), "frames"),
        (_put("frames", []), "frames"),
        (_drop("fl_x"), "fl_x"),
        (_drop("transform_matrix", 1), r"frames\[1\].*transform_matrix"),
        (_drop("file_path", 0), r"frames\[0\].*file_path"),
        (_put("fl_y", float("nan")), "fl_y"),
        (_put("cx", "wide"), "cx"),
        (_put("w", 32, frame=1), r"frames\[1\] size"),
        (_put("h", 47.5), "'h'"),
        (_put("transform_matrix", [[1, 0], [0, 1]], frame=0), r"frames\[0\]\.transform_matrix"),
        (_put("transform_matrix", (2 * np.eye(4)).tolist(), frame=1), r"frames\[1\]\.transform_matrix"),
        (_put("transform_matrix", np.diag([1.0, 1, 1, np.nan]).tolist(), frame=0), r"frames\[0\]\.transform_matrix"),
    ],
)
def test_cameras_from_transforms_errors_name_the_key(d, match):
    with pytest.raises(ValueError, match=match):
        cameras_from_transforms(d)


def test_cameras_to_transforms_errors(rng):
    cams = random_cameras(rng, 2)
    with pytest.raises(ValueError, match="file_paths"):
        cameras_to_transforms(cams, ["only-one.png"])
    with pytest.raises(ValueError, match="'fl_x'"):
        cameras_to_transforms(cams, ["a", "b"], extra={"fl_x": 1.0})
    cams.K[1, 0, 1] = 0.3
    with pytest.raises(ValueError, match="skew"):
        cameras_to_transforms(cams, ["a", "b"])


def test_quaternion_errors():
    with pytest.raises(ValueError, match="q"):
        quaternion_to_rotation(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="R"):
        rotation_to_quaternion(np.eye(3))
    with pytest.raises(ValueError, match="q"):
        quaternion_sign_continuity(np.array([[1.0, 0, 0, np.nan]]))
