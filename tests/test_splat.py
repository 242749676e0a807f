"""Forward splatting: Triton (interpreter on CPU, CUDA when present) against the torch reference, and
known answers for the reference itself (identity, translation, occlusion, ties, flying pixels) plus a
brute-force z-buffer built on backend.geometry.projection."""

from __future__ import annotations

import math
import secrets

import numpy as np
import pytest
import torch

import kernels.splat as S
import kernels.splat_cpu as SC
from backend.geometry.projection import project_points, unproject_depth
from kernels.splat import SplatResult, source_validity, splat, splat_reference, splat_triton

B, C, H, W, V, HT, WT = 2, 3, 17, 23, 3, 19, 21


def _intrinsics(f: float, h: int, w: int) -> torch.Tensor:
    return torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def _rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula for one axis-angle vector (3,) → (3, 3)."""
    theta = float(axis_angle.norm())
    k = axis_angle / max(theta, 1e-12)
    Kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return torch.eye(3) + math.sin(theta) * Kx + (1 - math.cos(theta)) * Kx @ Kx


def _random_scene(gen: torch.Generator, device: str = "cpu"):
    """Random RGB-D source with a depth step and invalid pixels, random nearby target cameras."""
    color = torch.rand(B, C, H, W, generator=gen)
    depth = 2.0 + 0.3 * torch.rand(B, H, W, generator=gen)
    depth[:, 4:9, 6:13] = 1.0 + 0.05 * torch.rand(B, 5, 7, generator=gen)  # a near box: flying pixels
    depth[0, 0, :3] = torch.tensor([0.0, math.inf, math.nan])  # invalid depths are never splatted
    K_src = _intrinsics(18.0, H, W).expand(B, 3, 3).clone()
    c2w_src = torch.eye(4).expand(B, 4, 4).clone()
    K_tgt = _intrinsics(20.0, HT, WT).expand(B, V, 3, 3).clone()
    for r, c, scale in ((0, 0, 1.0), (1, 1, 1.0), (0, 2, 0.5), (1, 2, 0.5), (0, 1, 0.1)):  # fx fy cx cy skew
        K_tgt[:, :, r, c] += scale * torch.randn(B, V, generator=gen)
    c2w_tgt = torch.eye(4).repeat(B, V, 1, 1)
    for b in range(B):
        for v in range(V):
            c2w_tgt[b, v, :3, :3] = _rotation(0.08 * torch.randn(3, generator=gen))
            c2w_tgt[b, v, :3, 3] = 0.2 * torch.randn(3, generator=gen)
    args = (color, depth, K_src, c2w_src, K_tgt, c2w_tgt)
    return tuple(t.to(device) for t in args)


def _poisoned(device: str) -> SplatResult:
    """Output buffers full of garbage: every element must be written by the kernels."""
    return SplatResult(
        torch.full((B, V, C, HT, WT), math.nan, device=device),
        torch.full((B, V, HT, WT), math.nan, device=device),
        torch.randint(0, 2, (B, V, HT, WT), device=device).bool(),
    )


def _compare_paths(device: str, mode: str, edge_threshold: float | None) -> None:
    seed = secrets.randbits(31)  # fresh inputs every run; the seed is in the message to reproduce
    gen = torch.Generator().manual_seed(seed)
    args = _random_scene(gen, device)
    ref = splat_reference(*args, (HT, WT), mode=mode, edge_threshold=edge_threshold)
    out = splat_triton(*args, (HT, WT), mode=mode, edge_threshold=edge_threshold, out=_poisoned(device))
    assert 0.2 < ref.mask.float().mean().item() < 1.0, f"seed {seed}: degenerate scene"
    assert torch.equal(out.mask, ref.mask), f"seed {seed}"
    if mode == "nearest":
        assert torch.equal(out.depth, ref.depth), f"seed {seed}"
        assert torch.equal(out.color, ref.color), f"seed {seed}"
    else:
        torch.testing.assert_close(out.depth, ref.depth, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")
        torch.testing.assert_close(out.color, ref.color, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inside the interpreter, on masked lanes
@pytest.mark.skipif(not S._INTERPRETED, reason="kernels were compiled for the GPU: no interpreter path "
                    "(the CUDA test below compares them instead)")
@pytest.mark.parametrize(("mode", "edge_threshold"), [("nearest", 0.1), ("nearest", None), ("soft", 0.1)])
def test_triton_matches_reference_interpreter(mode, edge_threshold):
    _compare_paths("cpu", mode, edge_threshold)


@pytest.mark.gpu
@pytest.mark.parametrize(("mode", "edge_threshold"), [("nearest", 0.1), ("nearest", None), ("soft", 0.1)])
def test_triton_matches_reference_cuda(mode, edge_threshold):
    assert not S._INTERPRETED, "TRITON_INTERPRET is set on a GPU machine: nothing would be compiled"
    _compare_paths("cuda", mode, edge_threshold)
    args = _random_scene(torch.Generator().manual_seed(1), "cuda")
    assert torch.equal(splat(*args, (HT, WT)).color, splat_triton(*args, (HT, WT)).color)


def _single(color, depth, f_src=10.0, K_tgt=None, c2w_tgt=None, out_hw=None, **kw) -> SplatResult:
    """Splat one source image into one target camera (identity pose unless given)."""
    h, w = depth.shape
    K = _intrinsics(f_src, h, w)[None]
    K_tgt = K[:, None] if K_tgt is None else K_tgt[None, None]
    c2w_tgt = torch.eye(4)[None, None] if c2w_tgt is None else c2w_tgt[None, None]
    res = splat_reference(color[None], depth[None], K, torch.eye(4)[None], K_tgt, c2w_tgt, out_hw or (h, w), **kw)
    return SplatResult(res.color[0, 0], res.depth[0, 0], res.mask[0, 0])


@pytest.mark.parametrize("mode", ["nearest", "soft"])
def test_identity_camera_reproduces_source(mode):
    color = torch.rand(3, 13, 16)
    depth = 2.0 + 0.1 * torch.rand(13, 16)  # neighbours within 5 %: no flying pixels at τ = 0.1
    res = _single(color, depth, mode=mode)
    assert res.mask.all()
    torch.testing.assert_close(res.color, color, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(res.depth, depth, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "soft"])
def test_translation_of_fronto_parallel_plane_shifts_image(mode):
    # plane at z = 2, f = 10: moving the camera 0.4 to the right moves the image f·t/z = 2 px left
    color = torch.rand(3, 9, 14)
    depth = torch.full((9, 14), 2.0)
    c2w = torch.eye(4)
    c2w[0, 3] = 0.4
    res = _single(color, depth, c2w_tgt=c2w, mode=mode)
    assert res.mask[:, :12].all() and not res.mask[:, 12:].any()
    torch.testing.assert_close(res.color[:, :, :12], color[:, :, 2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.depth[:, :12], depth[:, 2:])


@pytest.mark.parametrize("mode", ["nearest", "soft"])
def test_moving_forward_reports_target_depth(mode):
    # plane at z = 2; a camera 0.5 closer sees it at z = 1.5 and magnified by 2 / 1.5 about the centre
    color = torch.rand(3, 12, 12)
    c2w = torch.eye(4)
    c2w[2, 3] = 0.5
    res = _single(color, torch.full((12, 12), 2.0), c2w_tgt=c2w, mode=mode)
    # magnification leaves gaps in nearest mode (about 1 − (1.5/2)² of the pixels); soft fills them
    frac = res.mask[2:10, 2:10].float().mean().item()
    assert frac == 1.0 if mode == "soft" else 0.4 < frac < 0.75
    torch.testing.assert_close(res.depth[res.mask], torch.full_like(res.depth[res.mask], 1.5))


def test_near_point_hides_far_point():
    # a 1×1 target with a tiny focal length: every source point lands in the one pixel
    color = torch.rand(3, 4, 5)
    depth = 1.0 + torch.rand(4, 5)
    res = _single(color, depth, K_tgt=_intrinsics(1e-3, 1, 1), out_hw=(1, 1), edge_threshold=None)
    nearest = int(depth.flatten().argmin())
    assert res.mask.item()
    assert res.depth.item() == depth.flatten()[nearest].item()
    assert torch.equal(res.color[:, 0, 0], color.flatten(1)[:, nearest])


def test_soft_mode_background_does_not_bleed():
    color = torch.zeros(3, 4, 5)
    color[:, 2, 3] = 1.0  # the near point is white, the far ones black
    depth = torch.full((4, 5), 4.0)
    depth[2, 3] = 2.0
    res = _single(color, depth, K_tgt=_intrinsics(1e-3, 1, 1), out_hw=(1, 1), edge_threshold=None, mode="soft")
    assert res.mask.item()
    # the 19 points at twice the depth each weigh exp(-50) relative to the front one
    assert res.color[:, 0, 0].min().item() > 0.999
    assert abs(res.depth.item() - 2.0) < 1e-3


def test_ties_go_to_the_lower_source_index():
    color = torch.rand(3, 4, 5)
    depth = torch.full((4, 5), 3.0)
    depth[1, 2] = depth[3, 0] = 1.5  # two equally near points: index 7 beats index 15
    res = _single(color, depth, K_tgt=_intrinsics(1e-3, 1, 1), out_hw=(1, 1), edge_threshold=None)
    assert torch.equal(res.color[:, 0, 0], color[:, 1, 2])
    depth[1, 2] = 3.0  # all equal but one: the remaining near point wins
    res = _single(color, depth, K_tgt=_intrinsics(1e-3, 1, 1), out_hw=(1, 1), edge_threshold=None)
    assert torch.equal(res.color[:, 0, 0], color[:, 3, 0])


def test_flying_pixels_at_a_depth_step_are_dropped():
    depth = torch.ones(6, 10)
    depth[:, 5:] = 3.0  # a step between columns 4 and 5
    depth[0, 0] = 0.0  # unknown depth: not splatted, and it does not condemn its neighbours
    expect = torch.ones(6, 10, dtype=torch.bool)
    expect[:, 4:6] = False
    expect[0, 0] = False
    assert torch.equal(source_validity(depth[None], 0.1)[0], expect)
    res = _single(torch.rand(3, 6, 10), depth)
    assert torch.equal(res.mask, expect)
    assert torch.equal(source_validity(depth[None], None)[0], depth > 0)


def test_matches_brute_force_zbuffer_on_projection_module():
    """Independent oracle: float64 project_points(unproject_depth(...)) and a per-pixel Python z-buffer."""
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    color, depth, K_src, c2w_src, K_tgt, c2w_tgt = _random_scene(gen)
    res = splat_reference(color, depth, K_src, c2w_src, K_tgt, c2w_tgt, (HT, WT))
    ok = source_validity(depth, 0.1)
    pts = unproject_depth(depth.double(), K_src.double(), c2w_src.double())  # (B, H, W, 3)
    for b in range(B):
        for v in range(V):
            uv, z = project_points(
                pts[b : b + 1].reshape(1, -1, 3), K_tgt[b : b + 1, v].double(), c2w_tgt[b : b + 1, v].double()
            )
            uv, z = uv[0].numpy(), z[0].numpy()
            best: dict[tuple[int, int], tuple[float, int]] = {}
            unsure = set()  # pixels near which a point's rounding could go either way
            for n in np.flatnonzero(ok[b].flatten().numpy()):
                if not z[n] > 0:
                    continue
                pix = (int(np.floor(uv[n, 1])), int(np.floor(uv[n, 0])))
                if np.abs(uv[n] - np.round(uv[n])).min() < 1e-3:
                    unsure.update((pix[0] + di, pix[1] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1))
                if not (0 <= uv[n, 0] < WT and 0 <= uv[n, 1] < HT):
                    continue
                best[pix] = min(best.get(pix, (math.inf, -1)), (float(z[n]), int(n)))
            for i in range(HT):
                for j in range(WT):
                    if (i, j) in unsure:
                        continue
                    assert bool(res.mask[b, v, i, j]) == ((i, j) in best)
                    if (i, j) in best:
                        zb, n = best[(i, j)]
                        assert abs(res.depth[b, v, i, j].item() - zb) < 1e-4 * zb
                        assert torch.equal(res.color[b, v, :, i, j], color[b, :, n // W, n % W])


def test_chunked_reference_equals_single_chunk(monkeypatch):
    gen = torch.Generator().manual_seed(secrets.randbits(31))
    args = _random_scene(gen)
    whole = [splat_reference(*args, (HT, WT), mode=m) for m in ("nearest", "soft")]
    monkeypatch.setattr(S, "CHUNK_POINTS", 2 * W)  # two rows per chunk, a ragged last chunk
    parts = [splat_reference(*args, (HT, WT), mode=m) for m in ("nearest", "soft")]
    for a, b in zip(whole, parts):
        assert torch.equal(a.mask, b.mask)
        torch.testing.assert_close(a.color, b.color, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a.depth, b.depth, rtol=1e-6, atol=1e-6)


def test_bad_inputs_raise_value_errors_naming_the_field():
    args = list(_random_scene(torch.Generator().manual_seed(0)))
    args[1] = args[1][:, :-1]
    with pytest.raises(ValueError, match="depth"):
        splat_reference(*args, (HT, WT))
    args = list(_random_scene(torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="mode"):
        splat_reference(*args, (HT, WT), mode="bilinear")
    bad_out = _poisoned("cpu")._replace(mask=torch.zeros(B, V, HT, WT))
    with pytest.raises(ValueError, match=r"out\.mask"):
        splat_triton(*args, (HT, WT), out=bad_out)


# ---- the fused CPU path (kernels/splat_cpu.py) against the eager reference ----


def _odd_scene(seed: int, b: int = 2, c: int = 3, h: int = 13, w: int = 29, v: int = 3):
    """Like _random_scene but with its own odd sizes, so the fused path sees shapes the others do not."""
    gen = torch.Generator().manual_seed(seed)
    color = torch.rand(b, c, h, w, generator=gen)
    depth = 2.0 + 0.3 * torch.rand(b, h, w, generator=gen)
    depth[:, 3:7, 5:12] = 1.0 + 0.05 * torch.rand(b, 4, 7, generator=gen)  # a near box: flying pixels
    depth[0, 0, :4] = torch.tensor([0.0, math.inf, math.nan, -1.0])  # invalid depths
    K_src = _intrinsics(15.0, h, w).expand(b, 3, 3).clone()
    K_tgt = _intrinsics(16.0, h + 2, w - 4).expand(b, v, 3, 3).clone()
    K_tgt[:, :, :2, :] += 0.5 * torch.randn(b, v, 2, 3, generator=gen)  # focal, skew and centre jitter
    c2w_tgt = torch.eye(4).repeat(b, v, 1, 1)
    for i in range(b):
        for j in range(v):
            c2w_tgt[i, j, :3, :3] = _rotation(0.08 * torch.randn(3, generator=gen))
            c2w_tgt[i, j, :3, 3] = 0.2 * torch.randn(3, generator=gen)
    return (color, depth, K_src, torch.eye(4).expand(b, 4, 4).clone(), K_tgt, c2w_tgt), (h + 2, w - 4)


def _fused_vs_reference(compiled: bool, mode: str, edge_threshold: float | None, seed: int) -> None:
    args, hw = _odd_scene(seed)
    ref = splat_reference(*args, hw, mode=mode, edge_threshold=edge_threshold)
    poisoned = SplatResult(
        torch.full_like(ref.color, math.nan), torch.full_like(ref.depth, math.nan), (~ref.mask).contiguous()
    )  # every element must be written
    out = SC.splat_cpu(*args, hw, mode=mode, edge_threshold=edge_threshold, out=poisoned, compiled=compiled)
    assert out.color.data_ptr() == poisoned.color.data_ptr()
    assert 0.2 < ref.mask.float().mean().item() < 1.0, f"seed {seed}: degenerate scene"
    assert torch.equal(out.mask, ref.mask), f"seed {seed}"
    if mode == "nearest":  # the same float32 operations in the same order: bit for bit
        assert torch.equal(out.depth, ref.depth), f"seed {seed}"
        assert torch.equal(out.color, ref.color), f"seed {seed}"
    else:  # exp from another vector library: last-bit differences
        torch.testing.assert_close(out.depth, ref.depth, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")
        torch.testing.assert_close(out.color, ref.color, rtol=1e-5, atol=1e-5, msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("edge_threshold", [0.1, None])
def test_fused_eager_nearest_equals_reference(edge_threshold):
    _fused_vs_reference(False, "nearest", edge_threshold, secrets.randbits(31))


def test_fused_blocks_of_rows_equal_one_block(monkeypatch):
    monkeypatch.setattr(SC, "CHUNK_PAIRS", 2 * 3 * 29 * 2)  # two rows per block, a ragged last block
    _fused_vs_reference(False, "nearest", 0.1, secrets.randbits(31))


def test_masked_depth_is_source_validity():
    args, _hw = _odd_scene(secrets.randbits(31))
    depth = args[1]
    for tau in (0.1, None):
        z = SC.masked_depth(depth, math.inf if tau is None else tau)
        ok = source_validity(depth, tau)
        assert torch.equal(~torch.isnan(z), ok)
        assert torch.equal(z[ok], depth[ok])


def test_dispatcher_on_cpu_equals_reference():
    args, hw = _odd_scene(secrets.randbits(31))
    for mode in ("nearest", "soft"):
        got, ref = splat(*args, hw, mode=mode), splat_reference(*args, hw, mode=mode)
        assert torch.equal(got.mask, ref.mask)
        torch.testing.assert_close(got.color, ref.color, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a cold Inductor compilation takes tens of seconds of CPU (then it is disk-cached)
@pytest.mark.parametrize(("mode", "edge_threshold"), [("nearest", 0.1), ("nearest", None), ("soft", 0.1)])
def test_fused_inductor_equals_reference(mode, edge_threshold):
    if not SC.compile_enabled():
        pytest.skip("PARALLAX_NO_COMPILE=1")
    for _ in range(2):  # fresh inputs, and a second call through the compiled (dynamic-shape) graphs
        _fused_vs_reference(True, mode, edge_threshold, secrets.randbits(31))
    assert not SC._BROKEN, f"Inductor failed, the test ran the eager passes: {SC._BROKEN}"
