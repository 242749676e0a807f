"""TSDF fusion: analytic depth maps of a sphere fuse into a mesh on the sphere, in its colour."""

import numpy as np
import torch

from backend.geometry.projection import camera_directions
from backend.geometry.tsdf import extract_mesh, fuse


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world looking from eye at target (y down, z forward)."""
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1)
    c2w[:3, 3] = eye
    return c2w


def _sphere_depth(K: np.ndarray, c2w: np.ndarray, H: int, W: int, radius: float) -> np.ndarray:
    """z-depth of a sphere of `radius` at the origin; 0 where the ray misses it."""
    dirs = camera_directions(torch.as_tensor(K)[None], H, W)[0].numpy()  # (H, W, 3), z = 1
    world = dirs @ c2w[:3, :3].T  # un-normalised, so the ray parameter t is z-depth
    o = c2w[:3, 3]
    a = (world**2).sum(-1)
    b = 2 * world @ o
    c = o @ o - radius**2
    disc = b**2 - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    return np.where(disc > 0, t, 0.0).astype(np.float32)


def test_sphere_is_reconstructed_within_a_voxel():
    H = W = 64  # pixel footprint at the sphere (~0.04) about one voxel
    radius = 1.0
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    eyes = [np.array([3.0 * np.cos(a), 3.0 * np.sin(a), 0.8 * (-1) ** i]) for i, a in
            enumerate(np.linspace(0, 2 * np.pi, 8, endpoint=False))]
    c2w = np.stack([_look_at(e, np.zeros(3)) for e in eyes])
    depth = np.stack([_sphere_depth(K, p, H, W, radius) for p in c2w])
    images = np.zeros((len(c2w), H, W, 3), np.uint8)
    images[..., 0] = 200  # a red sphere
    volume = fuse(images, depth, np.repeat(K[None], len(c2w), 0), c2w, voxel_size=0.04)
    verts, faces, colours = extract_mesh(volume)
    assert len(verts) > 500 and len(faces) > 500
    err = np.abs(np.linalg.norm(verts, axis=1) - radius)
    assert err.mean() < volume.voxel_size, err.mean()
    assert faces.max() < len(verts)
    assert np.all(colours[:, 0] == 200) and np.all(colours[:, 1:] == 0)


def test_fuse_rejects_empty_depth():
    import pytest

    with pytest.raises(ValueError, match="no valid"):
        fuse(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 4), np.float32), np.eye(3)[None], np.eye(4)[None])
