"""PLY point clouds and triangle meshes, numpy only (the Blender add-on may vendor this file).

The format is Greg Turk's Polygon File Format (Stanford, 1994): an ASCII header of `element` and
`property` lines, then the element rows in ASCII or packed binary. `write_ply` writes binary
little-endian (float32 positions/normals, uchar colours, `list uchar int vertex_indices` triangles);
`read_ply` reads that plus ASCII and big-endian files from other tools, skipping elements and
properties it does not use and fan-triangulating polygons.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import numpy as np

# PLY scalar type names (both the 1994 names and the sized aliases) -> numpy kind+size, no byte order.
_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
# Colour property names seen in the wild, in order of preference.
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))


@dataclass
class _Property:
    name: str  # property name, e.g. "x" or "vertex_indices"
    dtype: str  # numpy kind+size of the value(s), e.g. "f4"
    count_dtype: str | None = None  # numpy kind+size of a list's length prefix; None for scalars


@dataclass
class _Element:
    name: str  # element name, e.g. "vertex" or "face"
    count: int  # number of rows
    properties: list[_Property]  # in file order


# ----------------------------------------------------------------------------------------------------
# writing


def _check_array(name: str, a, n: int | None, kind: str) -> np.ndarray:
    """Validate an (n, 3) array of the given numpy kind ('f' finite floats, 'i' integers)."""
    a = np.asarray(a)
    if a.ndim != 2 or a.shape[1] != 3 or (n is not None and a.shape[0] != n):
        want = f"({n}, 3)" if n is not None else "(N, 3)"
        raise ValueError(f"write_ply: {name} must have shape {want}, got {a.shape}")
    if kind == "f" and (a.dtype.kind not in "fiu" or not np.isfinite(a).all()):
        raise ValueError(f"write_ply: {name} must be finite real numbers (dtype {a.dtype})")
    if kind == "i" and a.dtype.kind not in "iu":
        raise ValueError(f"write_ply: {name} must be integers, got dtype {a.dtype}")
    return a


def _vertex_table(points, colors, normals) -> tuple[np.ndarray, list[str]]:
    """Pack vertices into one structured array and return it with its header property lines."""
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    table = np.empty(len(points), dtype=fields)
    for i, axis in enumerate("xyz"):
        table[axis] = points[:, i]
        if normals is not None:
            table["n" + axis] = normals[:, i]
    if colors is not None:
        for i, c in enumerate(("red", "green", "blue")):
            table[c] = colors[:, i]
    names = {"<f4": "float", "u1": "uchar"}
    return table, [f"property {names[t]} {f}" for f, t in fields]


def _ascii_rows(table: np.ndarray, faces: np.ndarray | None) -> bytes:
    """ASCII body: '%.9g' keeps float32 values exact on the way back."""
    fmt = " ".join("%.9g" if table.dtype[f].kind == "f" else "%d" for f in table.dtype.names)
    lines = [fmt % tuple(row) for row in table.tolist()]
    if faces is not None:
        lines += [f"3 {a} {b} {c}" for a, b, c in faces.tolist()]
    return ("\n".join(lines) + "\n").encode("ascii") if lines else b""


def write_ply(
    path: str | os.PathLike,
    points,
    colors=None,
    faces=None,
    normals=None,
    binary: bool = True,
) -> None:
    """Write a point cloud or triangle mesh as PLY, atomically (temp file in the same folder + rename).

    points: (N, 3) finite floats (stored float32); colors: (N, 3) uint8 RGB; faces: (M, 3) integer
    vertex indices in [0, N); normals: (N, 3) finite floats. `binary=False` writes ASCII.
    """
    points = _check_array("points", points, None, "f")
    n = len(points)
    if colors is not None:
        colors = np.asarray(colors)
        if colors.dtype != np.uint8:
            raise ValueError(f"write_ply: colors must be uint8, got dtype {colors.dtype}")
        _check_array("colors", colors, n, "i")
    if normals is not None:
        normals = _check_array("normals", normals, n, "f")
    if faces is not None:
        faces = _check_array("faces", faces, None, "i")
        if faces.size and (faces.min() < 0 or faces.max() >= n):
            raise ValueError(f"write_ply: faces index outside [0, {n}): range {faces.min()}..{faces.max()}")
    table, props = _vertex_table(points, colors, normals)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", "comment parallax"]
    header += [f"element vertex {n}", *props]
    if faces is not None:
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    head = ("\n".join(header) + "\n").encode("ascii")
    if not binary:
        body = _ascii_rows(table, faces)
    else:
        body = table.tobytes()
        if faces is not None:
            tri = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
            tri["n"], tri["v"] = 3, faces
            body += tri.tobytes()
    atomic_write_bytes(path, head + body)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to a temp file beside `path`, fsync, then os.replace: readers never see half a file."""
    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # 'x' respects the umask, unlike mkstemp's 0600
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------------
# reading


def _parse_header(data: bytes, path: str) -> tuple[str | None, list[_Element], int]:
    """Parse the header; returns (byte order or None for ASCII, elements, offset of the body)."""
    if not data.startswith(b"ply"):
        raise ValueError(f"{path}: not a PLY file (no 'ply' magic)")
    end = data.find(b"end_header")
    if end < 0:
        raise ValueError(f"{path}: malformed PLY header (no end_header)")
    newline = data.find(b"\n", end)
    body = newline + 1 if newline >= 0 else len(data)
    try:
        lines = data[:end].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: malformed PLY header (not ASCII)") from e
    order, elements = "missing", []
    for line in lines:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and len(tok) == 3 and tok[1] in _FORMATS:
            order = _FORMATS[tok[1]]
        elif tok[0] == "element" and len(tok) == 3 and tok[2].isdigit():
            elements.append(_Element(tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements and len(tok) == 3 and tok[1] in _TYPES:
            elements[-1].properties.append(_Property(tok[2], _TYPES[tok[1]]))
        elif (tok[0] == "property" and elements and len(tok) == 5 and tok[1] == "list"
              and tok[2] in _TYPES and tok[3] in _TYPES and _TYPES[tok[2]][0] in "iu"):  # fmt: skip
            elements[-1].properties.append(_Property(tok[4], _TYPES[tok[3]], _TYPES[tok[2]]))
        else:
            raise ValueError(f"{path}: malformed PLY header line {line!r}")
    if order == "missing":
        raise ValueError(f"{path}: malformed PLY header (no valid 'format' line)")
    return order, elements, body


def _row_dtype(el: _Element, order: str, list_len: int) -> np.dtype:
    """Structured row dtype assuming every list in the element has `list_len` entries."""
    fields = []
    for p in el.properties:
        if p.count_dtype is None:
            fields.append((p.name, order + p.dtype))
        else:
            fields.append(("__n_" + p.name, order + p.count_dtype))
            fields.append((p.name, order + p.dtype, (list_len,)))
    return np.dtype(fields)


def _read_binary(el: _Element, data: bytes, off: int, order: str, path: str) -> tuple[dict, int]:
    """Read one element's rows from a binary body; returns ({property: values}, new offset)."""
    lists = [p for p in el.properties if p.count_dtype is not None]
    guess = 0
    if lists and el.count:  # guess every list has the first row's length (true for triangle meshes)
        before = el.properties[: el.properties.index(lists[0])]
        at = off + _row_dtype(_Element(el.name, 1, before), order, 0).itemsize
        if at + np.dtype(lists[0].count_dtype).itemsize > len(data):
            raise ValueError(f"{path}: PLY body truncated in element '{el.name}'")
        guess = int(np.frombuffer(data, order + lists[0].count_dtype, 1, at)[0])
    dt = _row_dtype(el, order, guess)
    end = off + dt.itemsize * el.count
    if end <= len(data):
        rows = np.frombuffer(data, dt, el.count, off)
        if all((rows["__n_" + p.name] == guess).all() for p in lists):
            return {p.name: rows[p.name] for p in el.properties}, end
    if not lists:
        raise ValueError(f"{path}: PLY body truncated in element '{el.name}'")
    return _read_binary_rows(el, data, off, order, path)


def _read_binary_rows(el: _Element, data: bytes, off: int, order: str, path: str) -> tuple[dict, int]:
    """Row-by-row fallback for elements whose lists vary in length (e.g. mixed quads and triangles)."""
    out: dict[str, list] = {p.name: [] for p in el.properties}
    try:
        for _ in range(el.count):
            for p in el.properties:
                n = 1
                if p.count_dtype is not None:
                    n = int(np.frombuffer(data, order + p.count_dtype, 1, off)[0])
                    off += np.dtype(p.count_dtype).itemsize
                v = np.frombuffer(data, order + p.dtype, n, off)
                off += v.nbytes
                out[p.name].append(v if p.count_dtype is not None else v[0])
    except ValueError as e:
        raise ValueError(f"{path}: PLY body truncated in element '{el.name}'") from e
    return {p.name: out[p.name] if p.count_dtype else np.array(out[p.name]) for p in el.properties}, off


def _read_ascii(el: _Element, tokens: list[bytes], pos: int, path: str) -> tuple[dict, int]:
    """Read one element's rows from the whitespace-split ASCII body starting at token `pos`."""
    props = el.properties
    try:
        if all(p.count_dtype is None for p in props):  # fast path: a plain table of numbers
            n = el.count * len(props)
            if pos + n > len(tokens):
                raise IndexError
            table = np.array(tokens[pos : pos + n], dtype=np.float64).reshape(el.count, len(props))
            return {p.name: table[:, i].astype(p.dtype) for i, p in enumerate(props)}, pos + n
        out: dict[str, list] = {p.name: [] for p in props}
        for _ in range(el.count):
            for p in props:
                n = 1 if p.count_dtype is None else int(tokens[pos])
                pos += p.count_dtype is not None
                if pos + n > len(tokens):
                    raise IndexError
                v = np.array(tokens[pos : pos + n], dtype=np.float64).astype(p.dtype)
                out[p.name].append(v if p.count_dtype is not None else v[0])
                pos += n
    except (IndexError, ValueError) as e:
        raise ValueError(f"{path}: malformed ASCII PLY body in element '{el.name}'") from e
    return {p.name: out[p.name] if p.count_dtype else np.array(out[p.name]) for p in props}, pos


def _triangles(lists, n_vertices: int, path: str) -> np.ndarray:
    """Fan-triangulate polygon index lists into (M, 3) int64; checks indices are in range."""
    if isinstance(lists, np.ndarray) and lists.ndim == 2 and lists.shape[1] == 3:
        tris = lists.astype(np.int64)
    else:
        out = []
        for poly in lists:
            poly = np.asarray(poly, dtype=np.int64)
            if len(poly) < 3:
                raise ValueError(f"{path}: face with {len(poly)} vertices")
            out += [(poly[0], poly[k], poly[k + 1]) for k in range(1, len(poly) - 1)]
        tris = np.array(out, dtype=np.int64).reshape(-1, 3)
    if tris.size and (tris.min() < 0 or tris.max() >= n_vertices):
        raise ValueError(f"{path}: face index outside [0, {n_vertices})")
    return tris


def _colors(props: dict) -> np.ndarray | None:
    """Vertex colours as uint8 RGB: integer channels pass through (16-bit scaled), floats are 0..1."""
    for names in _COLOR_NAMES:
        if all(n in props for n in names):
            c = np.stack([np.asarray(props[n]) for n in names], axis=1)
            if c.dtype.kind == "f" and c.max(initial=0) <= 1.0:
                return np.round(np.clip(c, 0, 1) * 255).astype(np.uint8)
            if c.dtype == np.uint16:
                return np.round(c / 257.0).astype(np.uint8)
            return np.clip(c, 0, 255).astype(np.uint8)
    return None


def read_ply(path: str | os.PathLike) -> dict:
    """Read a PLY file (ASCII, binary little- or big-endian).

    Returns dict(points (N, 3) float32 (float64 if stored as double), colors (N, 3) uint8 | None,
    faces (M, 3) int64 | None (polygons fan-triangulated), normals (N, 3) | None).
    Raises ValueError naming the path for a malformed header or body, FileNotFoundError if missing.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    order, elements, off = _parse_header(data, path)
    tokens = data[off:].split() if order is None else []
    parsed: dict[str, dict] = {}
    pos = 0  # token cursor for ASCII bodies; `off` is the byte cursor for binary ones
    for el in elements:
        if order is None:
            parsed[el.name], pos = _read_ascii(el, tokens, pos, path)
        else:
            parsed[el.name], off = _read_binary(el, data, off, order, path)
    vert = parsed.get("vertex")
    if vert is None or not all(k in vert for k in "xyz"):
        raise ValueError(f"{path}: PLY has no 'vertex' element with x, y, z properties")

    def stack(keys) -> np.ndarray:
        a = np.stack([np.asarray(vert[k]) for k in keys], axis=1)
        return a.astype(np.result_type(a.dtype, np.float32))

    faces = None
    if "face" in parsed:
        key = next((k for k in ("vertex_indices", "vertex_index") if k in parsed["face"]), None)
        if key is None:
            raise ValueError(f"{path}: PLY 'face' element has no vertex_indices list")
        faces = _triangles(parsed["face"][key], len(vert["x"]), path)
    normals = stack(("nx", "ny", "nz")) if all(k in vert for k in ("nx", "ny", "nz")) else None
    return {"points": stack("xyz"), "colors": _colors(vert), "faces": faces, "normals": normals}
