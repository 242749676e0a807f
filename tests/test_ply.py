"""PLY I/O: binary and ASCII round trips, files written by hand as independent oracles, clear errors."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from backend.data.ply import read_ply, write_ply


def _mesh(rng: np.random.Generator, n: int = 20, m: int = 12):
    points = rng.normal(size=(n, 3)) * 10.0
    colors = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    faces = rng.integers(0, n, size=(m, 3))
    normals = rng.normal(size=(n, 3))
    return points, colors, faces, normals


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_with_colors_faces_normals(tmp_path, rng, binary):
    points, colors, faces, normals = _mesh(rng)
    path = tmp_path / "mesh.ply"
    write_ply(path, points, colors=colors, faces=faces, normals=normals, binary=binary)
    out = read_ply(path)
    # Positions and normals are stored as float32: the round trip is exact at that precision.
    np.testing.assert_array_equal(out["points"], points.astype(np.float32))
    np.testing.assert_array_equal(out["normals"], normals.astype(np.float32))
    np.testing.assert_array_equal(out["colors"], colors)
    np.testing.assert_array_equal(out["faces"], faces)
    assert out["colors"].dtype == np.uint8 and out["faces"].shape == (12, 3)
    assert os.listdir(tmp_path) == ["mesh.ply"]  # the temp file was renamed, not left beside it


@pytest.mark.parametrize("binary", [True, False])
def test_points_only_round_trip(tmp_path, rng, binary):
    points = rng.uniform(-1, 1, size=(7, 3)).astype(np.float32)
    write_ply(tmp_path / "p.ply", points, binary=binary)
    out = read_ply(tmp_path / "p.ply")
    np.testing.assert_array_equal(out["points"], points)
    assert out["colors"] is None and out["faces"] is None and out["normals"] is None


def test_binary_layout_is_standard(tmp_path, rng):
    """Known answer: header text and body size of binary little-endian PLY (15 B/vertex, 13 B/face)."""
    points, colors, faces, _ = _mesh(rng, n=5, m=2)
    write_ply(tmp_path / "m.ply", points, colors=colors, faces=faces)
    data = (tmp_path / "m.ply").read_bytes()
    header, body = data.split(b"end_header\n", 1)
    lines = header.decode().splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "element vertex 5" in lines and "element face 2" in lines
    assert "property list uchar int vertex_indices" in lines
    assert len(body) == 5 * (3 * 4 + 3) + 2 * (1 + 3 * 4)
    x0, y0, z0, r0, g0, b0 = struct.unpack("<fffBBB", body[:15])
    assert (x0, y0, z0) == tuple(points[0].astype(np.float32).tolist())
    assert (r0, g0, b0) == tuple(colors[0].tolist())
    assert struct.unpack("<Biii", body[75:88]) == (3, *faces[0].tolist())


def test_hand_written_ascii_with_quad_and_comments(tmp_path):
    """ASCII from another tool: comments, float colours in 0..1, a quad that must be fan-triangulated."""
    text = """ply
format ascii 1.0
comment made by hand
element vertex 4
property float x
property float y
property float z
property float red
property float green
property float blue
element face 2
property list uchar int vertex_indices
end_header
0 0 0 1 0 0
1 0 0 0 1 0
1 1 0 0 0 1
0 1 0.5 0.5 0.5 0.5
4 0 1 2 3
3 3 2 1
"""
    (tmp_path / "a.ply").write_text(text)
    out = read_ply(tmp_path / "a.ply")
    np.testing.assert_array_equal(out["points"], [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0.5]])
    np.testing.assert_array_equal(out["colors"], [[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]])
    np.testing.assert_array_equal(out["faces"], [[0, 1, 2], [0, 2, 3], [3, 2, 1]])
    assert out["normals"] is None


def test_hand_written_big_endian_with_extra_element_and_mixed_polygons(tmp_path):
    """Binary big-endian, doubles, an unused property and element, and faces of varying length."""
    header = (
        b"ply\nformat binary_big_endian 1.0\nelement vertex 4\n"
        b"property double x\nproperty double y\nproperty double z\nproperty float intensity\n"
        b"element edge 1\nproperty int vertex1\nproperty int vertex2\n"
        b"element face 2\nproperty list uchar uint vertex_indices\nend_header\n"
    )
    pts = [(0.1, 0.2, 0.3), (1.0, 2.0, 3.0), (-1.0, 0.0, 4.5), (7.0, 8.0, 9.0)]
    body = b"".join(struct.pack(">dddf", *p, 0.5) for p in pts)
    body += struct.pack(">ii", 0, 1)
    body += struct.pack(">BIIII", 4, 0, 1, 2, 3) + struct.pack(">BIII", 3, 1, 2, 3)
    (tmp_path / "b.ply").write_bytes(header + body)
    out = read_ply(tmp_path / "b.ply")
    assert out["points"].dtype == np.float64  # doubles stay doubles
    np.testing.assert_array_equal(out["points"], pts)
    np.testing.assert_array_equal(out["faces"], [[0, 1, 2], [0, 2, 3], [1, 2, 3]])
    assert out["colors"] is None


@pytest.mark.parametrize(
    "content, match",
    [
        (b"plx\nformat ascii 1.0\nend_header\n", "magic"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n", "end_header"),
        (b"ply\nformat binary_middle_endian 1.0\nend_header\n", "header"),
        (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty quaternion x\nend_header\n", "header line"),
        (b"ply\nformat ascii 1.0\nelement vertex two\nend_header\n", "header line"),
        (b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n", "vertex"),
    ],
)
def test_malformed_header_raises(tmp_path, content, match):
    (tmp_path / "bad.ply").write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        read_ply(tmp_path / "bad.ply")
    assert "bad.ply" in str(info.value)


@pytest.mark.parametrize("binary", [True, False])
def test_truncated_body_raises(tmp_path, rng, binary):
    points, colors, faces, _ = _mesh(rng)
    write_ply(tmp_path / "t.ply", points, colors=colors, faces=faces, binary=binary)
    data = (tmp_path / "t.ply").read_bytes()
    (tmp_path / "t.ply").write_bytes(data[: len(data) - 20])
    with pytest.raises(ValueError, match=r"t\.ply"):
        read_ply(tmp_path / "t.ply")


def test_face_index_out_of_range_in_file_raises(tmp_path):
    text = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    text += "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 3\n"
    (tmp_path / "f.ply").write_text(text)
    with pytest.raises(ValueError, match="face index"):
        read_ply(tmp_path / "f.ply")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"points": np.zeros((4, 2))}, "points"),
        ({"points": np.array([[0.0, np.nan, 0.0]])}, "points"),
        ({"points": np.zeros((4, 3)), "colors": np.zeros((4, 3))}, "colors"),
        ({"points": np.zeros((4, 3)), "colors": np.zeros((3, 3), np.uint8)}, "colors"),
        ({"points": np.zeros((4, 3)), "faces": np.array([[0, 1, 4]])}, "faces"),
        ({"points": np.zeros((4, 3)), "faces": np.array([[0.0, 1.0, 2.0]])}, "faces"),
        ({"points": np.zeros((4, 3)), "normals": np.zeros((4, 4))}, "normals"),
    ],
)
def test_write_rejects_bad_input_and_leaves_nothing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_ply(tmp_path / "x.ply", **kwargs)
    assert os.listdir(tmp_path) == []


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_ply(tmp_path / "nope.ply")
