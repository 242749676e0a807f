"""Edit propagation: optical-flow region tracking and the `edit` job end to end on a rendered clip."""

from __future__ import annotations

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from backend.data.clips import (
    read_frames,
    read_image,
    read_mask,
    read_video,
    write_image,
    write_mask,
    write_video,
)
from backend.geometry.projection import project_points, unproject_depth
from backend.pipelines.edit import composite, feather_alpha, plan_windows, propagate_edit
from backend.pipelines.track import TrackConfig, edit_region, forward_backward_error, track_mask, warp_mask

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQUARE = (slice(22, 34), slice(8, 20))  # rows, cols of the rendered clip's sphere in frame 0
PAINT = np.array([255, 40, 200], np.uint8)
AREA, WINDOW = 24 * 32, 5  # conftest.bundle's small working size; 8 frames -> three windows


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _edited(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    out[SQUARE] = PAINT
    return out


def _texture(rng: np.random.Generator, h: int = 160, w: int = 200) -> np.ndarray:
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    return np.clip((tex - tex.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def _shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moved by (+dx, +dy) pixels (bilinear for fractional shifts)."""
    M = np.array([[1, 0, dx], [0, 1, dy]], np.float64)
    return cv2.warpAffine(image, M, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


# ----------------------------------------------------------------------------------------------------
# tracking


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_track_follows_a_translating_texture(rng, method):
    step = (1.5, -1.0)  # px per frame, fractional on purpose
    tex = _texture(rng)
    frames = np.stack([_shift(tex, step[0] * t, step[1] * t)[40:88, 60:124] for t in range(7)])  # (7, 48, 64, 3)
    m0 = np.zeros((48, 64), bool)
    m0[16:32, 20:36] = True
    tracked = track_mask(frames, m0, TrackConfig(method=method))
    for t in range(7):
        truth = _shift(m0.astype(np.float32), step[0] * t, step[1] * t) >= 0.5
        iou = (tracked[t] & truth).sum() / (tracked[t] | truth).sum()
        assert iou > 0.8, (t, iou)
    truth_last = _shift(m0.astype(np.float32), step[0] * 6, step[1] * 6) >= 0.5
    assert (m0 & truth_last).sum() / (m0 | truth_last).sum() < 0.6  # a static mask would fail the check


def test_warp_mask_and_forward_backward_error_known_flows():
    mask = np.zeros((20, 30), bool)
    mask[5:10, 8:15] = True
    back = np.zeros((20, 30, 2), np.float32)
    back[..., 0], back[..., 1] = -3, -2  # every pixel of frame t came from 3 px left, 2 px up
    np.testing.assert_array_equal(warp_mask(mask, back), np.roll(mask, (2, 3), axis=(0, 1)))
    forward = -back  # consistent: zero error wherever the lookup stays inside the frame
    err = forward_backward_error(forward, back)
    assert np.abs(err[2:, 3:]).max() < 1e-6
    wrong = forward + np.array([1.0, 0.0], np.float32)  # 1 px disagreement
    np.testing.assert_allclose(forward_backward_error(wrong, back)[2:, 3:], 1.0, atol=1e-6)


def test_track_includes_uncertain_pixels_only_near_the_region(rng):
    """A textured block slides 6 px right over a static background, uncovering background right next
    to the region: flows disagree there, so those pixels join the region — but only near it."""
    bg, fg = _texture(rng, 120, 160), _texture(np.random.default_rng(7), 40, 40)
    a, b = bg.copy(), bg.copy()
    a[40:80, 60:100] = fg
    b[40:80, 66:106] = fg
    m0 = np.zeros((120, 160), bool)
    m0[45:75, 40:60] = True  # background just left of the block
    out = track_mask(np.stack([a, b]), m0, TrackConfig(uncertain_margin=3))[1]
    assert out[m0].mean() > 0.95  # static background stays put
    assert out[45:75, 61:63].mean() > 0.95  # uncovered pixels within the margin join the region
    assert not out[:, 90:].any()  # the block's other (occluding) edge is far from the region
    strict = track_mask(np.stack([a, b]), m0, TrackConfig(uncertain_margin=0))[1]
    assert strict[45:75, 61:63].mean() < 0.6  # without the margin only the warp itself counts


def test_edit_region_thresholds_and_cleans(rng):
    frame = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    edited = np.clip(frame.astype(int) + rng.integers(-6, 7, frame.shape), 0, 255).astype(np.uint8)  # re-encoding
    edited[10:22, 30:44] = PAINT
    edited[40, 5] = 255 - frame[40, 5]  # a single stray pixel, removed by the opening
    region = edit_region(frame, edited, threshold=12)
    truth = np.zeros((48, 64), bool)
    truth[10:22, 30:44] = (np.abs(PAINT.astype(int) - frame[10:22, 30:44]).max(-1) > 12)
    assert (region & truth).sum() / (region | truth).sum() > 0.9
    assert not region[35:, :20].any()


# ----------------------------------------------------------------------------------------------------
# windows and compositing


@pytest.mark.parametrize("frames,window", [(2, 8), (8, 8), (8, 5), (20, 8), (13, 3), (9, 2)])
def test_plan_windows_cover_each_frame_once_after_its_context(frames, window):
    plans = plan_windows(frames, window)
    generated = [f for _, new in plans for f in new]
    assert generated == list(range(1, frames))
    done = {0}
    for ctx, new in plans:
        assert ctx[0] == 0 and len(ctx) + len(new) <= window and set(ctx) <= done
        assert ctx == sorted(ctx) and max(ctx) < min(new)
        assert len(ctx) + len(new) == min(window, frames)  # every window as full as the clip allows
        done |= set(new)


def test_composite_keeps_outside_bytes_and_feathers_inside(rng):
    frame = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    fill = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    mask = np.zeros((32, 40), bool)
    mask[6:26, 8:32] = True
    alpha = feather_alpha(mask, 4)
    assert alpha[~mask].max() == 0 and alpha[12:20, 14:26].min() == 1
    assert 0 < alpha[6, 20] < 1  # the seam is blended
    out = composite(frame, fill, mask, 4)
    np.testing.assert_array_equal(out[~mask], frame[~mask])
    np.testing.assert_array_equal(out[12:20, 14:26], fill[12:20, 14:26])


# ----------------------------------------------------------------------------------------------------
# the job


def _true_region(clip, region: np.ndarray, t: int) -> np.ndarray:
    """Pixels of frame t showing the 3D points under `region` in frame 0 (rendered depth and cameras)."""
    K, c2w = torch.as_tensor(clip.cameras.K), torch.as_tensor(clip.cameras.c2w)
    pts = unproject_depth(torch.as_tensor(clip.depth[:1]).double(), K[:1], c2w[:1])[0][torch.as_tensor(region)]
    uv, _ = project_points(pts[None], K[t : t + 1], c2w[t : t + 1])
    ij = np.floor(uv[0].numpy()).astype(int)
    H, W = region.shape
    ij = ij[(ij[:, 0] >= 0) & (ij[:, 0] < W) & (ij[:, 1] >= 0) & (ij[:, 1] < H)]
    out = np.zeros_like(region)
    out[ij[:, 1], ij[:, 0]] = True
    return out


def test_propagate_edit_on_rendered_clip(bundle, clip):
    video = clip.images
    edited = _edited(video[0])
    calls: list[float] = []
    res = propagate_edit(bundle, video, edited, dilate=4, steps=2, seed=3, progress=lambda f, m: calls.append(f))
    F, H, W, _ = video.shape
    assert res.images.shape == video.shape and res.images.dtype == np.uint8
    assert res.masks.shape == (F, H, W) and res.masks.dtype == bool
    np.testing.assert_array_equal(res.images[0], edited)
    region = np.zeros((H, W), bool)
    region[SQUARE] = True
    for t in range(1, F):
        assert res.masks[t].any()
        np.testing.assert_array_equal(res.images[t][~res.masks[t]], video[t][~res.masks[t]])
        truth = _true_region(clip, region, t)  # where the painted surface really is in frame t
        assert res.masks[t][truth].mean() > 0.8, t
    assert not np.array_equal(res.images[1:][res.masks[1:]], video[1:][res.masks[1:]])  # the model filled
    assert res.params()["windows"] == 3
    assert calls == sorted(calls) and calls[-1] == 1.0 and calls[0] >= 0
    again = propagate_edit(bundle, video, edited, dilate=4, steps=2, seed=3)
    np.testing.assert_array_equal(again.images, res.images)
    np.testing.assert_array_equal(again.masks, res.masks)
    other = propagate_edit(bundle, video, edited, dilate=4, steps=2, seed=4)
    assert not np.array_equal(other.images, res.images)


def test_propagate_edit_with_a_mask(bundle, clip):
    video = clip.images
    edited = _edited(video[0])
    edited[2, 60] = 0  # a change outside the user's mask still counts as changed in frame 0
    mask = np.zeros(video.shape[1:3], bool)
    mask[SQUARE] = True
    res = propagate_edit(bundle, video[:4], edited, mask=mask, dilate=0, steps=1, sampler="euler")
    assert res.masks[0][mask].all() and res.masks[0][2, 60]
    np.testing.assert_array_equal(res.images[0], edited)
    for t in range(1, 4):
        np.testing.assert_array_equal(res.images[t][~res.masks[t]], video[t][~res.masks[t]])


def test_propagate_edit_rejects_bad_input(bundle, clip):
    video = clip.images[:3]
    with pytest.raises(ValueError, match="edited"):
        propagate_edit(bundle, video, video[0, :-1], steps=1)
    with pytest.raises(ValueError, match="threshold"):
        propagate_edit(bundle, video, video[0].copy(), steps=1)  # nothing was edited
    with pytest.raises(ValueError, match="mask"):
        propagate_edit(bundle, video, _edited(video[0]), mask=np.zeros(video.shape[1:3], bool), steps=1)
    with pytest.raises(ValueError, match="dilate"):
        propagate_edit(bundle, video, _edited(video[0]), dilate=-1, steps=1)

    def cancel(fraction, message):
        if fraction > 0.5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        propagate_edit(bundle, video, _edited(video[0]), steps=2, progress=cancel)


def test_edit_cli_on_a_video_file_with_a_mask(clip, tmp_path):
    video_path, edited_path, mask_path = tmp_path / "in.mp4", tmp_path / "edited.png", tmp_path / "mask.png"
    write_video(video_path, clip.images[:6], 12.0)
    frames, _ = read_video(video_path)  # what the command will see (the codec is lossy)
    edited = _edited(frames[0])
    mask = np.zeros(frames.shape[1:3], bool)
    mask[SQUARE] = True
    write_image(edited_path, edited)
    write_mask(mask_path, mask)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "backend.cli", "edit", "--video", str(video_path), "--edited", str(edited_path),
           "--mask", str(mask_path), "--out", str(out), "--dilate", "3", "--steps", "1", "--sampler", "euler",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    images, _ = read_frames(str(out))
    assert images.shape == frames.shape
    np.testing.assert_array_equal(images[0], edited)
    masks = np.stack([read_mask(out / "masks" / f"{i:04d}.png") for i in range(len(frames))])
    assert masks[0][mask].all()
    for t in range(1, len(frames)):
        assert masks[t].any()
        np.testing.assert_array_equal(images[t][~masks[t]], frames[t][~masks[t]])
    decoded, fps = read_video(out / "edited.mp4")
    assert decoded.shape == frames.shape and fps == pytest.approx(12.0)
    assert read_image(out / "images" / "0000.png").shape == edited.shape
