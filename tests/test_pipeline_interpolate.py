"""Two-view interpolation end to end on a clip rendered by Blender Cycles (untrained random model).

What must hold whatever the weights: the endpoints are the inputs bit for bit, the frame count and
sizes, the hierarchical plan (every frame generated once, each group's ends known before it runs),
determinism, the cameras passed through, and the command line.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from backend.data.clips import read_clip, write_image
from backend.geometry.cameras import cameras_to_transforms
from backend.pipelines.engine import scale_intrinsics
from backend.pipelines.interpolate import interpolate, plan_groups

AREA, WINDOW = 16 * 24, 4  # conftest.bundle: a 16×24 working size (2×3 tokens per frame) keeps the model cheap
RUN = {"steps": 2, "sampler": "euler"}


@pytest.mark.parametrize("frames,window", [(2, 8), (8, 8), (19, 8), (30, 4), (6, 3)])
def test_plan_generates_every_frame_once_between_known_ends(frames, window):
    groups = plan_groups(frames, window)
    known = {0, frames - 1}
    generated = []
    for g in groups:
        assert len(g) <= window and g == sorted(g)
        if g is not groups[0]:
            assert g[0] in known and g[-1] in known  # both ends exist before the gap is filled
        new = [f for f in g if f not in known]
        generated += new
        known |= set(new)
    assert sorted(generated) == list(range(1, frames - 1)) and len(set(generated)) == len(generated)
    assert groups[0][0] == 0 and groups[0][-1] == frames - 1


def test_endpoints_exact_and_frame_count(bundle, clip):
    first, last = clip.images[0], clip.images[-1]
    res = interpolate(bundle, first, last, frames=6, seed=1, **RUN)
    assert res.images.shape == (6, 48, 64, 3) and res.images.dtype == np.uint8
    assert res.depth.shape == (6, 48, 64) and res.depth.dtype == np.float32
    np.testing.assert_array_equal(res.images[0], first)
    np.testing.assert_array_equal(res.images[-1], last)
    assert np.isfinite(res.depth).all() and (res.depth >= 0).all()
    assert res.params()["windows"] == len(plan_groups(6, 4)) == 3  # keyframes, then two gaps
    assert set(res.arrays()) == {"images", "depth"}  # no cameras were given, none are returned
    again = interpolate(bundle, first, last, frames=6, seed=1, **RUN)
    np.testing.assert_array_equal(again.images, res.images)
    np.testing.assert_array_equal(again.depth, res.depth)


def test_cameras_are_clean_and_returned(bundle, clip):
    cams = clip.cameras
    res = interpolate(bundle, clip.images[0], clip.images[-1], frames=4, K=cams.K[[0, 2, 5, 7]],
                      c2w=cams.c2w[[0, 2, 5, 7]], **RUN)
    assert res.images.shape == (4, 48, 64, 3)
    np.testing.assert_array_equal(res.images[0], clip.images[0])
    np.testing.assert_array_equal(res.images[-1], clip.images[-1])
    np.testing.assert_array_equal(res.arrays()["c2w"], cams.c2w[[0, 2, 5, 7]])
    np.testing.assert_array_equal(res.arrays()["K"], cams.K[[0, 2, 5, 7]])
    assert res.params()["cameras"] is True and res.params()["frames"] == 4
    json.dumps(res.params(), allow_nan=False)
    with pytest.raises(ValueError, match="c2w"):  # cameras are validated like every other input
        bad = cams.c2w[[0, 2, 5, 7]].copy()
        bad[1, :3, :3] *= 2
        interpolate(bundle, clip.images[0], clip.images[-1], frames=4, K=cams.K[[0, 2, 5, 7]], c2w=bad, **RUN)


def test_scene_units_do_not_change_the_frames(bundle, clip):
    """Cameras in centimetres instead of metres give the same frames, and depth 100× larger: the clip
    is normalised by its camera baseline, as training normalises depth-less clips."""
    idx = [0, 2, 5, 7]
    K, c2w = clip.cameras.K[idx], clip.cameras.c2w[idx]
    cm = c2w.copy()
    cm[:, :3, 3] *= 100
    m = interpolate(bundle, clip.images[0], clip.images[-1], frames=4, K=K, c2w=c2w, seed=3, **RUN)
    c = interpolate(bundle, clip.images[0], clip.images[-1], frames=4, K=K, c2w=cm, seed=3, **RUN)
    np.testing.assert_array_equal(m.images, c.images)
    np.testing.assert_allclose(c.depth, 100 * m.depth, rtol=1e-4)


def test_bad_inputs_name_the_field(bundle, clip):
    img = clip.images[0]
    with pytest.raises(ValueError, match="last"):
        interpolate(bundle, img, img[:40], frames=4)
    with pytest.raises(ValueError, match="frames"):
        interpolate(bundle, img, img, frames=1)
    with pytest.raises(ValueError, match="K and c2w"):
        interpolate(bundle, img, img, frames=8, K=clip.cameras.K)
    with pytest.raises(ValueError, match="frames"):
        interpolate(bundle, img, img, frames=5, K=clip.cameras.K, c2w=clip.cameras.c2w)


def test_cli_end_to_end(bundle_checkpoint, clip, tmp_path):
    ckpt = bundle_checkpoint
    write_image(tmp_path / "a.png", clip.images[0])
    write_image(tmp_path / "b.png", clip.images[-1])
    base = [sys.executable, "-m", "backend.cli", "interpolate", "--first", str(tmp_path / "a.png"), "--last",
            str(tmp_path / "b.png"), "--steps", "1", "--sampler", "euler", "--checkpoint", str(ckpt),
            "--device", "cpu"]
    out = tmp_path / "between"
    proc = subprocess.run([*base, "--frames", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = read_clip(out)
    assert written.images.shape == (5, 48, 64, 3) and written.depth.shape == (5, 48, 64)
    np.testing.assert_array_equal(written.images[0], clip.images[0])
    np.testing.assert_array_equal(written.images[-1], clip.images[-1])
    assert written.cameras is None
    # with cameras given at another size: the frame count follows them, K is rescaled to the images
    cams = clip.cameras[[0, 3, 7]]
    half = dataclasses.replace(cams, K=scale_intrinsics(cams.K, (48, 64), (24, 32)), width=32, height=24)
    (tmp_path / "t.json").write_text(json.dumps(cameras_to_transforms(half, ["x0", "x1", "x2"])))
    out2 = tmp_path / "along"
    proc = subprocess.run([*base, "--cameras", str(tmp_path / "t.json"), "--out", str(out2)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = read_clip(out2)
    assert written.images.shape == (3, 48, 64, 3)
    np.testing.assert_allclose(written.cameras.K, cams.K, atol=1e-6)
    np.testing.assert_allclose(written.cameras.c2w, cams.c2w, atol=1e-6)
