"""warp_rgbd: input validation (each error names its field) and hole dilation against scipy's erosion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from backend.geometry.warp import dilate_holes, warp_rgbd
from kernels.splat import splat_reference


def _inputs(h: int = 12, w: int = 15, views: int = 2) -> dict:
    K = torch.tensor([[12.0, 0.0, w / 2], [0.0, 12.0, h / 2], [0.0, 0.0, 1.0]])
    c2w_tgt = torch.eye(4).repeat(1, views, 1, 1)
    c2w_tgt[0, :, 0, 3] = torch.linspace(0.0, 0.3, views)
    return {
        "image": torch.rand(1, 3, h, w),
        "depth": 2.0 + 0.05 * torch.rand(1, h, w),
        "K_src": K[None].clone(),
        "c2w_src": torch.eye(4)[None].clone(),
        "K_tgt": K.repeat(1, views, 1, 1),
        "c2w_tgt": c2w_tgt,
        "out_hw": (h, w),
    }


def _with(field: str, value) -> dict:
    args = _inputs()
    args[field] = value
    return args


@pytest.mark.parametrize(
    ("field", "make"),
    [
        ("image", lambda a: a["image"][0]),
        ("depth", lambda a: a["depth"][:, :-1]),
        ("K_src", lambda a: a["K_src"][:, :2]),
        ("c2w_tgt", lambda a: a["c2w_tgt"][:, :1]),
        ("K_tgt", lambda a: a["K_tgt"][0]),
        ("out_hw", lambda a: (0, 5)),
        ("out_hw", lambda a: 7),
    ],
)
def test_wrong_shapes_name_the_field(field, make):
    with pytest.raises(ValueError, match=field):
        warp_rgbd(**_with(field, make(_inputs())))


@pytest.mark.parametrize("field", ["K_src", "c2w_src", "K_tgt", "c2w_tgt"])
def test_non_finite_cameras_are_rejected(field):
    bad = _inputs()[field].clone()
    bad[..., 0, 2] = math.nan if field.startswith("K") else math.inf
    with pytest.raises(ValueError, match=f"{field} has non-finite"):
        warp_rgbd(**_with(field, bad))


@pytest.mark.parametrize(("field", "entry", "value"), [("K_src", (0, 0), 0.0), ("K_tgt", (1, 1), -3.0)])
def test_non_positive_focal_is_rejected(field, entry, value):
    bad = _inputs()[field].clone()
    bad[..., entry[0], entry[1]] = value
    with pytest.raises(ValueError, match=f"{field} must have positive focal"):
        warp_rgbd(**_with(field, bad))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="mode"):
        warp_rgbd(**_inputs(), mode="linear")
    with pytest.raises(ValueError, match="hole_dilation"):
        warp_rgbd(**_inputs(), hole_dilation=-1)


def test_without_dilation_it_is_the_splat():
    args = _inputs()
    res = warp_rgbd(**args, mode="soft")
    ref = splat_reference(
        *(args[k] for k in ("image", "depth", "K_src", "c2w_src", "K_tgt", "c2w_tgt")), args["out_hw"], mode="soft"
    )
    for a, b in zip(res, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize("radius", [1, 2])
def test_hole_dilation_matches_scipy_erosion(radius):
    args = _inputs(h=14, w=17, views=1)
    args["depth"][0, 5:9, 8] = 0.0  # a one-pixel-wide disocclusion-like slit of unknown depth
    args["depth"][0, 0, 0] = 0.0  # a hole at the border
    plain = warp_rgbd(**args)
    grown = warp_rgbd(**args, hole_dilation=radius)
    valid = plain.mask[0, 0].numpy()
    assert not valid[5:9, 8].any() and valid.sum() > 0.8 * valid.size
    # oracle: binary erosion with a (2r+1)² square; pixels beyond the border count as valid
    expect = ndimage.binary_erosion(valid, np.ones((2 * radius + 1,) * 2), border_value=1)
    assert np.array_equal(grown.mask[0, 0].numpy(), expect)
    assert not expect[5:9, 8 - radius : 9 + radius].any()  # the slit is now 2r + 1 wide
    assert (grown.color[0, 0][:, ~grown.mask[0, 0]] == 0).all()
    assert (grown.depth[0, 0][~grown.mask[0, 0]] == 0).all()
    keep = grown.mask[0, 0]
    assert torch.equal(grown.color[0, 0][:, keep], plain.color[0, 0][:, keep])


def test_dilate_holes_keeps_leading_dims():
    mask = torch.ones(2, 3, 5, 6, dtype=torch.bool)
    mask[1, 2, 2, 3] = False
    out = dilate_holes(mask, 1)
    assert out.shape == mask.shape
    assert int((~out).sum()) == 9 and not out[1, 2, 1:4, 2:5].any()
