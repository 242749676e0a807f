"""Clip folders, images, masks and videos: round trips, clear errors and atomic writes."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from backend.data.clips import (
    Clip,
    frame_name,
    read_clip,
    read_frames,
    read_image,
    read_mask,
    read_video,
    write_clip,
    write_image,
    write_mask,
    write_video,
)
from backend.geometry.cameras import Cameras

F, H, W = 3, 12, 16  # small clips keep the tests fast


def _rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random proper rotations from QR of Gaussian matrices. (n, 3, 3)"""
    q, r = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def _cameras(rng: np.random.Generator, n: int = F) -> Cameras:
    """Per-frame intrinsics (so transforms.json carries them per frame) and random poses."""
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = rng.uniform(10, 30, n)
    K[:, 1, 1] = rng.uniform(10, 30, n)
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = rng.uniform(6, 10, n), rng.uniform(4, 8, n), 1.0
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = _rotations(rng, n)
    c2w[:, :3, 3] = rng.normal(size=(n, 3))
    return Cameras(K, c2w, W, H)


def _clip(rng: np.random.Generator, depth=True, cameras=True, fps=24.0) -> Clip:
    images = rng.integers(0, 256, size=(F, H, W, 3), dtype=np.uint8)
    d = None
    if depth:
        d = rng.uniform(0.5, 20.0, size=(F, H, W)).astype(np.float32)
        d[:, :2, :3] = 0.0  # unknown depth is allowed
    return Clip(images, d, _cameras(rng) if cameras else None, fps)


def _assert_same_cameras(a: Cameras, b: Cameras) -> None:
    assert (a.width, a.height) == (b.width, b.height)
    np.testing.assert_allclose(a.K, b.K, atol=1e-9, rtol=0)
    np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-9, rtol=0)


# ------------------------------------------------------------------------------------------- clips


def test_frame_name():
    assert frame_name(0) == "0000.png"
    assert frame_name(42, ".npy") == "0042.npy"
    assert frame_name(12345) == "12345.png"
    with pytest.raises(ValueError, match="frame index"):
        frame_name(-1)


@pytest.mark.parametrize("depth, cameras, fps", [(True, True, 24.0), (False, False, None), (True, False, None),
                                                 (False, True, 12.5)])  # fmt: skip
def test_clip_round_trip(tmp_path, rng, depth, cameras, fps):
    clip = _clip(rng, depth, cameras, fps)
    write_clip(tmp_path / "clip", clip)
    assert sorted(os.listdir(tmp_path / "clip" / "images")) == ["0000.png", "0001.png", "0002.png"]
    out = read_clip(tmp_path / "clip")
    np.testing.assert_array_equal(out.images, clip.images)
    assert out.fps == fps
    if depth:
        assert out.depth.dtype == np.float32
        np.testing.assert_array_equal(out.depth, clip.depth)
    else:
        assert out.depth is None and not (tmp_path / "clip" / "depth").exists()
    if cameras:
        _assert_same_cameras(out.cameras, clip.cameras)
    else:
        assert out.cameras is None and not (tmp_path / "clip" / "transforms.json").exists()
    assert os.listdir(tmp_path) == ["clip"]  # no temp sibling left


def test_transforms_json_is_nerfstudio_relative(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng))
    d = json.loads((tmp_path / "c" / "transforms.json").read_text())
    assert [f["file_path"] for f in d["frames"]] == ["images/0000.png", "images/0001.png", "images/0002.png"]
    assert [f["depth_file_path"] for f in d["frames"]] == ["depth/0000.npy", "depth/0001.npy", "depth/0002.npy"]
    assert (d["w"], d["h"]) == (W, H)


def test_cameras_matched_by_file_path_not_order(tmp_path, rng):
    """transforms.json frames shuffled, with './' prefixes and no extension: cameras follow the images."""
    clip = _clip(rng)
    write_clip(tmp_path / "c", clip)
    tf = tmp_path / "c" / "transforms.json"
    d = json.loads(tf.read_text())
    d["frames"] = [d["frames"][2], d["frames"][0], d["frames"][1]]
    d["frames"][0]["file_path"] = "./images/0002"
    tf.write_text(json.dumps(d))
    _assert_same_cameras(read_clip(tmp_path / "c").cameras, clip.cameras)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_clip(tmp_path / "nope")


def test_unreadable_image_names_file(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng))
    (tmp_path / "c" / "images" / "0001.png").write_bytes(b"this is not a png at all")
    with pytest.raises(ValueError, match=r"0001\.png"):
        read_clip(tmp_path / "c")


def test_transforms_frame_count_mismatch(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng))
    tf = tmp_path / "c" / "transforms.json"
    d = json.loads(tf.read_text())
    d["frames"] = d["frames"][:2]
    tf.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"transforms\.json has 2 frames .* 3 images"):
        read_clip(tmp_path / "c")


def test_transforms_unknown_file_path_and_bad_json(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng))
    tf = tmp_path / "c" / "transforms.json"
    d = json.loads(tf.read_text())
    d["frames"][1]["file_path"] = "images/0009.png"
    tf.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"0009\.png"):
        read_clip(tmp_path / "c")
    tf.write_text("{not json")
    with pytest.raises(ValueError, match=r"transforms\.json"):
        read_clip(tmp_path / "c")


@pytest.mark.parametrize(
    "depth_file, match",
    [
        (np.zeros((H + 1, W), np.float32), "shape"),
        (np.full((H, W), np.nan, np.float32), "non-finite"),
        (-np.ones((H, W), np.float32), "negative"),
    ],
)
def test_bad_depth_file_names_file(tmp_path, rng, depth_file, match):
    write_clip(tmp_path / "c", _clip(rng))
    np.save(tmp_path / "c" / "depth" / "0001.npy", depth_file)
    with pytest.raises(ValueError, match=match) as info:
        read_clip(tmp_path / "c")
    assert "0001.npy" in str(info.value)


def test_depth_must_cover_every_frame(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng))
    os.remove(tmp_path / "c" / "depth" / "0002.npy")
    with pytest.raises(ValueError, match=r"0002\.npy"):
        read_clip(tmp_path / "c")


def test_images_of_different_sizes(tmp_path, rng):
    write_clip(tmp_path / "c", _clip(rng, depth=False, cameras=False))
    write_image(tmp_path / "c" / "images" / "0002.png", np.zeros((H, W + 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"0002\.png"):
        read_clip(tmp_path / "c")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"images": np.zeros((F, H, W, 3), np.float32)}, "Clip.images"),
        ({"images": np.zeros((F, H, W), np.uint8)}, "Clip.images"),
        ({"depth": np.zeros((F, H, W + 1), np.float32)}, "Clip.depth"),
        ({"depth": np.full((F, H, W), np.nan, np.float32)}, "Clip.depth"),
        ({"depth": np.zeros((F, H, W), np.float64)}, "Clip.depth"),
        ({"cameras": "cams"}, "Clip.cameras"),
        ({"fps": 0.0}, "Clip.fps"),
        ({"fps": float("inf")}, "Clip.fps"),
    ],
)
def test_clip_validation_names_field(rng, change, match):
    fields = {"images": np.zeros((F, H, W, 3), np.uint8), "depth": None, "cameras": None, "fps": None}
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        Clip(**fields)


def test_clip_validation_camera_count_and_size(rng):
    images = np.zeros((F, H, W, 3), np.uint8)
    with pytest.raises(ValueError, match=r"Clip\.cameras has 2 cameras for 3 frames"):
        Clip(images, cameras=_cameras(rng, n=2))
    cams = _cameras(rng)
    with pytest.raises(ValueError, match=r"Clip\.cameras size"):
        Clip(np.zeros((F, H, W + 2, 3), np.uint8), cameras=cams)


def test_invalid_clip_write_leaves_nothing(tmp_path, rng):
    clip = _clip(rng)
    clip.depth[-1, 0, 0] = np.nan  # mutated after construction: write_clip must re-validate
    with pytest.raises(ValueError, match=r"Clip\.depth"):
        write_clip(tmp_path / "c", clip)
    assert os.listdir(tmp_path) == []


def test_failure_midway_leaves_nothing_and_keeps_old_clip(tmp_path, rng):
    """A valid Clip whose camera has skew: images are written, then transforms.json refuses the skew."""
    old = _clip(rng)
    bad = _clip(rng)
    K = bad.cameras.K.copy()
    K[:, 0, 1] = 0.5
    bad.cameras = Cameras(K, bad.cameras.c2w, W, H)
    with pytest.raises(ValueError, match="skew"):
        write_clip(tmp_path / "c", bad)
    assert os.listdir(tmp_path) == []
    write_clip(tmp_path / "c", old)
    with pytest.raises(ValueError, match="skew"):
        write_clip(tmp_path / "c", bad, overwrite=True)
    assert os.listdir(tmp_path) == ["c"]
    np.testing.assert_array_equal(read_clip(tmp_path / "c").images, old.images)


def test_overwrite(tmp_path, rng):
    a, b = _clip(rng), _clip(rng, depth=False, cameras=False)
    write_clip(tmp_path / "c", a)
    with pytest.raises(FileExistsError):
        write_clip(tmp_path / "c", b)
    write_clip(tmp_path / "c", b, overwrite=True)
    out = read_clip(tmp_path / "c")
    np.testing.assert_array_equal(out.images, b.images)
    assert out.depth is None and out.cameras is None  # nothing of the old clip survives
    assert os.listdir(tmp_path) == ["c"]


# ------------------------------------------------------------------------------------ images, masks


def test_write_image_is_rgb_png(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", rgb)
    bgr = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)  # independent reader, BGR order
    np.testing.assert_array_equal(bgr[:, :, ::-1], rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    assert os.listdir(tmp_path) == ["a.png"]


def test_read_image_converts_gray_alpha_and_16bit(tmp_path, rng):
    gray = rng.integers(0, 256, size=(5, 7), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.stack([gray] * 3, axis=-1))
    bgra = rng.integers(0, 256, size=(5, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), bgra[:, :, 2::-1])
    deep = rng.integers(0, 65536, size=(5, 7, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    expect = (deep[:, :, ::-1].astype(np.int64) * 255 + 32767) // 65535  # nearest 8-bit level, integers
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), expect)
    exact = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "e.png"), exact.astype(np.uint16) * 257)  # 8-bit data stored as 16-bit
    np.testing.assert_array_equal(read_image(tmp_path / "e.png"), exact[:, :, ::-1])


def test_read_image_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match=r"bad\.png"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="rgb"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))


def test_masks(tmp_path, rng):
    mask = rng.random((6, 9)) > 0.5
    write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    bgra = np.full((6, 9, 4), 255, np.uint8)
    bgra[:, :, 3] = np.where(mask, 255, 0)  # white everywhere, the mask painted in alpha
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), mask)
    colour = np.zeros((6, 9, 3), np.uint8)
    colour[mask, 1] = 200  # green strokes on black
    cv2.imwrite(str(tmp_path / "c.png"), colour)
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png"), mask)


# ------------------------------------------------------------------------------------------- video


def _video_frames(n: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth, distinct frames (codecs are lossy on noise): moving red ramp, green ramp, blue level."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([np.clip(3 * x + 10 * i, 0, 255), 4 * y, np.full_like(x, 25 * i)], -1) for i in range(n)]
    return np.stack(frames).astype(np.uint8)  # (F, H, W, 3)


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_video_round_trip(tmp_path, ext):
    frames = _video_frames()
    write_video(tmp_path / f"v{ext}", frames, 12.0)
    assert os.listdir(tmp_path) == [f"v{ext}"]
    out, fps = read_video(tmp_path / f"v{ext}")
    assert out.shape == frames.shape and out.dtype == np.uint8 and fps == pytest.approx(12.0)
    err = np.abs(out.astype(int) - frames).mean(axis=(1, 2, 3))  # per frame
    assert err.max() < 5.0  # measured ~3 (mp4v) and ~1.5 (MJPG) on this content
    shifted = np.abs(out[1:].astype(int) - frames[:-1]).mean(axis=(1, 2, 3))
    assert (err[1:] < shifted).all()  # each frame matches itself better than its neighbour: order kept
    assert out[..., 2].mean() == pytest.approx(frames[..., 2].mean(), abs=3)  # RGB, not BGR


def test_read_video_stride_and_max_frames(tmp_path):
    frames = _video_frames()
    write_video(tmp_path / "v.avi", frames, 12.0)
    out, fps = read_video(tmp_path / "v.avi", stride=3)
    assert out.shape[0] == 3 and fps == pytest.approx(4.0)
    assert np.abs(out.astype(int) - frames[::3]).mean() < 5.0
    out, fps = read_video(tmp_path / "v.avi", max_frames=2, stride=2)
    assert out.shape[0] == 2 and np.abs(out.astype(int) - frames[[0, 2]]).mean() < 5.0
    with pytest.raises(ValueError, match="stride"):
        read_video(tmp_path / "v.avi", stride=0)


def test_video_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.mp4"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match=r"junk\.mp4"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    frames = _video_frames(2)
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "v.mkv", frames, 10.0)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "v.mp4", frames[:, :47], 10.0)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "v.mp4", frames, 0.0)
    assert sorted(os.listdir(tmp_path)) == ["empty.mp4", "junk.mp4"]


# -------------------------------------------------------------------------------------- read_frames


def test_read_frames_from_every_source(tmp_path, rng):
    clip = _clip(rng, depth=False, cameras=False, fps=30.0)
    write_clip(tmp_path / "clip", clip)
    frames, fps = read_frames(tmp_path / "clip")
    np.testing.assert_array_equal(frames, clip.images)
    assert fps == 30.0
    # A plain folder sorted by natural order: frame_2 comes before frame_10.
    os.mkdir(tmp_path / "seq")
    for i, name in zip(range(3), ["frame_1.png", "frame_2.png", "frame_10.png"]):
        write_image(tmp_path / "seq" / name, clip.images[i])
    frames, fps = read_frames(tmp_path / "seq")
    np.testing.assert_array_equal(frames, clip.images)
    assert fps is None
    video = _video_frames(4)
    write_video(tmp_path / "v.avi", video, 8.0)
    frames, fps = read_frames(tmp_path / "v.avi")
    assert frames.shape == video.shape and fps == pytest.approx(8.0)
    frames, fps = read_frames(tmp_path / "clip" / "images" / "0001.png")
    np.testing.assert_array_equal(frames, clip.images[1:2])
    with pytest.raises(FileNotFoundError):
        read_frames(tmp_path / "nothing")
    os.mkdir(tmp_path / "empty")
    with pytest.raises(ValueError, match="no images"):
        read_frames(tmp_path / "empty")
