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
    with pytest.raises(ValueError, match="crack_radius"):
        warp_rgbd(**_inputs(), crack_radius=-1)


def test_without_dilation_it_is_the_splat():
    args = _inputs()
    res = warp_rgbd(**args, mode="soft", crack_radius=0)
    ref = splat_reference(
        *(args[k] for k in ("image", "depth", "K_src", "c2w_src", "K_tgt", "c2w_tgt")), args["out_hw"], mode="soft"
    )
    assert torch.equal(res.mask, ref.mask)
    # the CPU dispatcher may take the native soft splat: libm's expf, so equal within float tolerance
    torch.testing.assert_close(res.color, ref.color, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.depth, ref.depth, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("radius", [1, 2])
def test_hole_dilation_matches_scipy_erosion(radius):
    args = _inputs(h=14, w=17, views=1)
    args["depth"][0, 5:9, 8] = 0.0  # a one-pixel-wide disocclusion-like slit of unknown depth
    args["depth"][0, 0, 0] = 0.0  # a hole at the border
    plain = warp_rgbd(**args, crack_radius=0)
    grown = warp_rgbd(**args, hole_dilation=radius, crack_radius=0)
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


def _plane_scene(h: int = 40, w: int = 48, forward: float = 0.8, box: bool = False) -> dict:
    """A textured fronto-parallel plane at z = 2 seen from a camera that moves `forward` towards it
    (a magnification of 2 / (2 - forward)); optionally a near box (z = 1) whose disocclusion is wide."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xx * 5.0, yy * 6.0, (xx + yy) * 2.0])[None] + torch.rand(1, 3, h, w, generator=gen)
    depth = torch.full((1, h, w), 2.0)
    if box:
        depth[0, 10:30, 8:20] = 1.0
    K = torch.tensor([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]])[None]
    c2w_t = torch.eye(4)[None, None].clone()
    c2w_t[0, 0, 2, 3] = forward
    return {"image": image, "depth": depth, "K_src": K, "c2w_src": torch.eye(4)[None], "K_tgt": K[:, None],
            "c2w_tgt": c2w_t, "out_hw": (h, w)}


def _truth(args: dict) -> torch.Tensor:
    """The plane's colour at every target pixel, by backward mapping (exact for a plane at z = 2)."""
    h, w = args["out_hw"]
    z, t = 2.0, float(args["c2w_tgt"][0, 0, 2, 3])
    u = (torch.arange(w) + 0.5 - w / 2) * (z - t) / z + w / 2  # source column coordinate
    v = (torch.arange(h) + 0.5 - h / 2) * (z - t) / z + h / 2
    vv, uu = torch.meshgrid(torch.floor(v).long(), torch.floor(u).long(), indexing="ij")
    return args["image"][0][:, vv, uu]


def test_cracks_from_magnification_are_closed_with_the_surface_colour():
    args = _plane_scene(forward=0.8)  # 1.67× magnification: one point per source pixel leaves gaps
    raw = warp_rgbd(**args, crack_radius=0)
    filled = warp_rgbd(**args)
    inner = (slice(4, -4), slice(4, -4))
    assert raw.mask[0, 0][inner].float().mean() < 0.75  # the splat alone leaves cracks
    assert filled.mask[0, 0][inner].all()  # all closed
    err = (filled.color[0, 0] - _truth(args)).abs().mean(0)[inner]
    assert float(err.mean()) < 4.0  # the colour of the surface around them (gradients of 5-6 per px)
    torch.testing.assert_close(filled.depth[0, 0][inner], torch.full_like(err, 1.2), rtol=1e-4, atol=1e-4)


def test_wide_disocclusions_stay_holes():
    args = _plane_scene(forward=0.0, box=True)
    args["c2w_tgt"][0, 0, 0, 3] = 0.3  # a sideways step: the box uncovers a wide strip of the plane
    filled = warp_rgbd(**args)
    raw = warp_rgbd(**args, crack_radius=0)
    holes = ~raw.mask[0, 0]
    assert holes.sum() > 40  # a real disocclusion (12 px wide at the box's depth)
    assert (~filled.mask[0, 0] & holes).sum() >= 0.8 * holes.sum()  # still holes: not guessed from afar
