"""Procedural scenes for synthetic clips, built with bpy: geometry, textured materials, lights.

Two layouts, in the spirit of procedural datasets such as Kubric (Greff et al., CVPR 2022) and
"Infinigen" (Raistrick et al., CVPR 2023), but tiny and fast:

- room: a closed box interior (floor, ceiling, four walls; some walls get a door or window opening that
  shows the outside), furniture-sized primitives, clutter and thin poles, lit by area and point lights;
- outdoor: a ground plane with scattered primitives (cubes, spheres, cylinders, cones, tori, extruded
  polygons), thin structures (poles with wires between them, railings), lit by a sun.

Both are enclosed by a ground slab and a sky dome mesh (visible to camera rays only, so it is a
backdrop that does not light the scene), so every camera ray hits geometry and depth is defined
everywhere. Meshes carry their world transform in their vertices (object matrix = identity), so the
textures, which use Object coordinates, are in world units. Every surface gets a procedural texture
(noise, Voronoi, checker, wave, brick, magic, or an image texture synthesised with numpy and packed
into the .blend): correspondence needs texture, flat colour teaches nothing.

All randomness comes from the numpy Generator passed in, so a seed fixes the scene.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

# isort: off
import bpy  # first: importing bpy is what makes bmesh and mathutils importable
import bmesh
from mathutils import Matrix, Vector

# isort: on

from backend.data.synth import SceneConfig
from backend.data.synth_camera import CameraBounds

DOME_RADIUS = 60.0  # sky dome radius; the camera far clip must exceed it


@dataclass
class SceneInfo:
    """What the camera sampler needs to know about a built scene."""

    layout: str  # 'room' or 'outdoor'
    bounds: CameraBounds  # free space for eyes, obstacles, look-at targets


# ----------------------------------------------------------------------------------------------------
# materials


def _colour(rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A random colour in linear RGB (HSV drawn in display space, then ~sRGB-decoded)."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.9), rng.uniform(0.12, 0.95))
    return (r**2.2, g**2.2, b**2.2, 1.0)


def numpy_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colourful RGBA float image (size, size, 4) in [0, 1]: smooth noise, stripes and random discs.

    The smooth noise is bilinearly upsampled random grids at three octaves; the result tiles only
    approximately, which is fine: Box projection hides seams on most faces.
    """
    y, x = np.mgrid[0:size, 0:size] / size  # (S, S) each
    img = np.zeros((size, size, 3))
    for octave, cells in enumerate((4, 8, 16)):
        grid = rng.random((cells + 1, cells + 1, 3))
        gy, gx = y * cells, x * cells
        i, j = gy.astype(int), gx.astype(int)
        fy, fx = (gy - i)[..., None], (gx - j)[..., None]
        top = grid[i, j] * (1 - fx) + grid[i, j + 1] * fx
        bot = grid[i + 1, j] * (1 - fx) + grid[i + 1, j + 1] * fx
        img += (top * (1 - fy) + bot * fy) / 2**octave
    img /= 1.75
    angle, freq = rng.uniform(0, np.pi), rng.integers(3, 12)
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
    img = img * (0.6 + 0.4 * stripes[..., None])
    for _ in range(rng.integers(3, 12)):
        c, r = rng.random(2), rng.uniform(0.03, 0.15)
        disc = (x - c[0]) ** 2 + (y - c[1]) ** 2 < r * r
        img[disc] = rng.random(3)
    rgba = np.concatenate([np.clip(img, 0, 1), np.ones((size, size, 1))], axis=-1)
    return rgba.astype(np.float32)


def _image_node(nodes, rng: np.random.Generator, size: int):
    """An Image Texture node showing a numpy-made image packed into the .blend (Box projection)."""
    img = bpy.data.images.new(f"tex{len(bpy.data.images)}", size, size, alpha=False)
    img.pixels.foreach_set(numpy_texture(rng, size).ravel())
    img.pack()
    node = nodes.new("ShaderNodeTexImage")
    node.image = img
    node.projection = "BOX"
    node.projection_blend = 0.2
    node.interpolation = "Linear"
    return node, node.outputs["Color"]


def _pattern(nodes, rng: np.random.Generator):
    """A procedural texture node with random parameters; returns (node, scalar output socket)."""
    kind = str(rng.choice(["noise", "voronoi", "checker", "wave", "brick", "magic"]))
    node = nodes.new({"noise": "ShaderNodeTexNoise", "voronoi": "ShaderNodeTexVoronoi",
                      "checker": "ShaderNodeTexChecker", "wave": "ShaderNodeTexWave",
                      "brick": "ShaderNodeTexBrick", "magic": "ShaderNodeTexMagic"}[kind])  # fmt: skip
    if kind == "noise":
        node.inputs["Detail"].default_value = rng.uniform(2, 8)
        node.inputs["Distortion"].default_value = rng.uniform(0, 1.5)
    elif kind == "voronoi":
        node.inputs["Randomness"].default_value = rng.uniform(0.5, 1)
        return node, node.outputs["Distance"]
    elif kind == "wave":
        node.inputs["Distortion"].default_value = rng.uniform(0, 6)
        node.inputs["Detail"].default_value = rng.uniform(0, 4)
    elif kind == "brick":
        node.inputs["Mortar Size"].default_value = rng.uniform(0.01, 0.04)
    return node, node.outputs["Factor"]


def make_material(
    rng: np.random.Generator, cfg: SceneConfig, name: str = "mat", scale_range: tuple[float, float] = (0.6, 6.0)
) -> bpy.types.Material:
    """Principled BSDF whose colour is a random texture (procedural or numpy image) in Object coordinates,
    multiplied by a second noise for large-scale variation; random roughness, sometimes metallic."""
    mat = bpy.data.materials.new(name)
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    bsdf = nodes["Principled BSDF"]
    coord = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    scale = float(np.exp(rng.uniform(*np.log(scale_range))))  # texture cycles per metre
    mapping.inputs["Scale"].default_value = (scale, scale, scale)
    mapping.inputs["Rotation"].default_value = tuple(rng.uniform(0, 2 * np.pi, 3))
    mapping.inputs["Location"].default_value = tuple(rng.uniform(-10, 10, 3))
    links.new(coord.outputs["Object"], mapping.inputs["Vector"])
    if rng.random() < cfg.image_texture_prob:
        tex, colour = _image_node(nodes, rng, cfg.texture_size)
        links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
    else:
        tex, fac = _pattern(nodes, rng)
        links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        ramp = nodes.new("ShaderNodeValToRGB")
        n_stops = int(rng.integers(2, 5))
        while len(ramp.color_ramp.elements) < n_stops:
            ramp.color_ramp.elements.new(0.5)
        stops = np.sort(rng.uniform(0.0, 1.0, n_stops))
        for el, pos in zip(ramp.color_ramp.elements, stops, strict=True):
            el.position, el.color = float(pos), _colour(rng)
        links.new(fac, ramp.inputs["Factor"])
        colour = ramp.outputs["Color"]
    # large-scale brightness variation: multiply by a low-frequency noise
    mix = nodes.new("ShaderNodeMix")
    mix.data_type, mix.blend_type = "RGBA", "MULTIPLY"
    ins = [s for s in mix.inputs if s.enabled]  # Factor, A, B for the RGBA type
    ins[0].default_value = rng.uniform(0.2, 0.7)
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = rng.uniform(0.1, 0.5)
    links.new(mapping.outputs["Vector"], noise.inputs["Vector"])
    links.new(colour, ins[1])
    links.new(noise.outputs["Color"], ins[2])
    links.new(next(s for s in mix.outputs if s.enabled), bsdf.inputs["Base Color"])
    bsdf.inputs["Roughness"].default_value = rng.uniform(0.25, 0.95)
    if rng.random() < cfg.metallic_prob:
        bsdf.inputs["Metallic"].default_value = rng.uniform(0.5, 1.0)
    return mat


def make_sky_material(rng: np.random.Generator) -> bpy.types.Material:
    """Emissive gradient (horizon → zenith colour) with cloud-like noise, for the dome."""
    mat = bpy.data.materials.new("sky")
    nt = mat.node_tree
    nodes, links = nt.nodes, nt.links
    for n in list(nodes):
        if n.bl_idname != "ShaderNodeOutputMaterial":
            nodes.remove(n)
    coord, sep = nodes.new("ShaderNodeTexCoord"), nodes.new("ShaderNodeSeparateXYZ")
    links.new(coord.outputs["Object"], sep.inputs["Vector"])
    ramp = nodes.new("ShaderNodeValToRGB")  # z / radius: horizon at 0, zenith at 1
    ramp.color_ramp.elements[0].color = _colour(rng)
    ramp.color_ramp.elements[1].color = _colour(rng)
    mult = nodes.new("ShaderNodeMath")
    mult.operation, mult.inputs[1].default_value = "MULTIPLY", 1.0 / DOME_RADIUS
    links.new(sep.outputs["Z"], mult.inputs[0])
    clouds = nodes.new("ShaderNodeTexNoise")
    clouds.inputs["Scale"].default_value = rng.uniform(0.03, 0.12)
    clouds.inputs["Detail"].default_value = 6.0
    links.new(coord.outputs["Object"], clouds.inputs["Vector"])
    add = nodes.new("ShaderNodeMath")
    add.operation = "ADD"
    links.new(mult.outputs[0], add.inputs[0])
    links.new(clouds.outputs["Factor"], add.inputs[1])
    links.new(add.outputs[0], ramp.inputs["Factor"])
    emit = nodes.new("ShaderNodeEmission")
    emit.inputs["Strength"].default_value = rng.uniform(0.6, 1.2)
    links.new(ramp.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], nodes["Material Output"].inputs["Surface"])
    return mat


# ----------------------------------------------------------------------------------------------------
# geometry: every builder bakes the world transform into the vertices and returns a bounding sphere


def _link(name: str, me: bpy.types.Mesh, mat: bpy.types.Material) -> bpy.types.Object:
    me.materials.append(mat)
    obj = bpy.data.objects.new(name, me)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _from_bmesh(name: str, bm: bmesh.types.BMesh, mat: bpy.types.Material) -> bpy.types.Object:
    me = bpy.data.meshes.new(name)
    bm.to_mesh(me)
    bm.free()
    return _link(name, me, mat)


def _pose(centre, yaw: float = 0.0, tilt: Matrix | None = None) -> Matrix:
    """World matrix: translation · yaw about Z · optional extra rotation."""
    m = Matrix.Translation(Vector(centre)) @ Matrix.Rotation(yaw, 4, "Z")
    return m @ tilt if tilt is not None else m


def add_box(centre, size, mat, yaw: float = 0.0) -> np.ndarray:
    """Axis-aligned (then yawed) box of full extents `size`. Returns bounding sphere (4,)."""
    bm = bmesh.new()
    scale = Matrix.Diagonal((*size, 1.0))
    bmesh.ops.create_cube(bm, size=1.0, matrix=_pose(centre, yaw) @ scale)
    _from_bmesh("box", bm, mat)
    return np.array([*centre, 0.5 * float(np.linalg.norm(size))])


def add_sphere(centre, radius: float, mat) -> np.ndarray:
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=24, v_segments=12, radius=radius, matrix=_pose(centre))
    _from_bmesh("sphere", bm, mat)
    return np.array([*centre, radius])


def add_cylinder(p0, p1, radius: float, mat, radius_top: float | None = None, segments: int = 16) -> np.ndarray:
    """Cylinder (or cone when radius_top differs) from point p0 to p1. Returns its bounding sphere."""
    p0, p1 = Vector(p0), Vector(p1)
    axis = p1 - p0
    rot = Vector((0, 0, 1)).rotation_difference(axis.normalized()).to_matrix().to_4x4()
    m = Matrix.Translation((p0 + p1) / 2) @ rot
    bm = bmesh.new()
    r_top = radius if radius_top is None else radius_top
    bmesh.ops.create_cone(bm, cap_ends=True, segments=segments, radius1=radius, radius2=r_top,
                          depth=axis.length, matrix=m)  # fmt: skip
    _from_bmesh("cylinder", bm, mat)
    return np.array([*((p0 + p1) / 2), math.hypot(axis.length / 2, max(radius, r_top))])


def thin_obstacles(p0, p1, radius: float) -> np.ndarray:
    """Spheres along a thin segment (a wire's bounding sphere would block the whole scene). (K, 4)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    k = max(2, int(np.linalg.norm(p1 - p0) / 0.3) + 1)
    pts = p0 + np.linspace(0, 1, k)[:, None] * (p1 - p0)
    return np.concatenate([pts, np.full((k, 1), radius + 0.15)], axis=1)


def add_torus(centre, major: float, minor: float, mat, tilt: Matrix) -> np.ndarray:
    """Torus from a (32 x 12) parametric grid of quads."""
    u = np.linspace(0, 2 * np.pi, 32, endpoint=False)[:, None]
    v = np.linspace(0, 2 * np.pi, 12, endpoint=False)[None, :]
    ring = major + minor * np.cos(v)
    verts = np.stack([ring * np.cos(u), ring * np.sin(u), minor * np.sin(v) + 0 * u], -1).reshape(-1, 3)
    i, j = np.meshgrid(np.arange(32), np.arange(12), indexing="ij")
    a, b = i * 12 + j, ((i + 1) % 32) * 12 + j
    c, d = ((i + 1) % 32) * 12 + (j + 1) % 12, i * 12 + (j + 1) % 12
    faces = np.stack([a, b, c, d], -1).reshape(-1, 4)
    m = np.array(_pose(centre, 0.0, tilt))
    verts = verts @ m[:3, :3].T + m[:3, 3]
    me = bpy.data.meshes.new("torus")
    me.from_pydata(verts.tolist(), [], faces.tolist())
    _link("torus", me, mat)
    return np.array([*centre, major + minor])


def add_prism(centre_xy, z0: float, height: float, radius: float, mat, rng: np.random.Generator) -> np.ndarray:
    """Extruded random star-shaped polygon standing on z0 (a 'pillar', 'wall piece' or 'block')."""
    k = int(rng.integers(3, 9))
    ang = np.sort(rng.uniform(0, 2 * np.pi, k))
    rad = radius * rng.uniform(0.5, 1.0, k)
    xy = np.stack([centre_xy[0] + rad * np.cos(ang), centre_xy[1] + rad * np.sin(ang)], -1)
    verts = [(x, y, z0) for x, y in xy] + [(x, y, z0 + height) for x, y in xy]
    faces = [list(range(k))[::-1], list(range(k, 2 * k))]
    faces += [[i, (i + 1) % k, k + (i + 1) % k, k + i] for i in range(k)]
    me = bpy.data.meshes.new("prism")
    me.from_pydata(verts, [], faces)
    _link("prism", me, mat)
    return np.array([centre_xy[0], centre_xy[1], z0 + height / 2, math.hypot(radius, height / 2)])


def add_primitive(rng: np.random.Generator, xy, z0: float, size: float, mat) -> tuple[np.ndarray, float]:
    """One random primitive of about `size` metres standing at (x, y, z0). Returns (bounding sphere, top z)."""
    kind = str(rng.choice(["cube", "sphere", "cylinder", "cone", "torus", "prism"]))
    x, y = float(xy[0]), float(xy[1])
    if kind == "cube":
        ext = size * rng.uniform(0.4, 1.0, 3)
        return add_box((x, y, z0 + ext[2] / 2), ext, mat, rng.uniform(0, np.pi)), z0 + ext[2]
    if kind == "sphere":
        r = size / 2 * rng.uniform(0.6, 1.0)
        zc = z0 + r + (rng.uniform(0, size) if rng.random() < 0.2 else 0.0)  # some float
        return add_sphere((x, y, zc), r, mat), zc + r
    if kind in ("cylinder", "cone"):
        h, r = size * rng.uniform(0.5, 1.5), size / 2 * rng.uniform(0.3, 1.0)
        top = r * rng.uniform(0, 0.3) if kind == "cone" else None
        return add_cylinder((x, y, z0), (x, y, z0 + h), r, mat, top), z0 + h
    if kind == "torus":
        major = size / 2 * rng.uniform(0.6, 1.0)
        minor = major * rng.uniform(0.15, 0.4)
        standing = rng.random() < 0.5
        tilt = Matrix.Rotation(rng.uniform(0, np.pi), 4, "Z") @ Matrix.Rotation(np.pi / 2 if standing else 0, 4, "X")
        zc = z0 + (major + minor if standing else minor)
        return add_torus((x, y, zc), major, minor, mat, tilt), zc + (major + minor if standing else minor)
    h = size * rng.uniform(0.4, 2.0)
    return add_prism((x, y), z0, h, size / 2, mat, rng), z0 + h


def _scatter(rng: np.random.Generator, n: int, lo, hi, radius: float, taken: list) -> list[np.ndarray]:
    """Up to n points in the xy box [lo, hi] at least `radius` from each other and from `taken` (x, y, r)."""
    out = []
    for _ in range(n * 20):
        if len(out) == n:
            break
        p = rng.uniform(lo, hi)
        if all(np.hypot(*(p - t[:2])) > radius + t[2] for t in taken):
            out.append(p)
            taken.append(np.array([p[0], p[1], radius]))
    return out


def _add_contents(
    rng, cfg: SceneConfig, lo_xy, hi_xy, size_range, ceiling: float, density: int = 1
) -> tuple[list, list]:
    """Primitives, clutter and thin structures inside an xy box; returns (obstacles, targets)."""
    obstacles, targets, taken = [], [], []
    mats = [make_material(rng, cfg, f"obj{k}") for k in range(4)]  # shared: scenes reuse materials
    n_obj = density * int(rng.integers(cfg.n_objects[0], cfg.n_objects[1] + 1))
    for xy in _scatter(rng, n_obj, lo_xy, hi_xy, size_range[1] * 0.6, taken):
        size = rng.uniform(*size_range)
        sphere, top = add_primitive(rng, xy, 0.0, size, mats[rng.integers(len(mats))])
        obstacles.append(sphere)
        targets.append(sphere[:3])
        if rng.random() < 0.4:  # clutter on top
            small, _ = add_primitive(rng, xy + rng.normal(0, 0.05, 2), top, size * 0.3, make_material(rng, cfg))
            obstacles.append(small)
    n_clutter = density * int(rng.integers(cfg.n_clutter[0], cfg.n_clutter[1] + 1))
    for xy in _scatter(rng, n_clutter, lo_xy, hi_xy, 0.2, taken):
        sphere, _ = add_primitive(rng, xy, 0.0, rng.uniform(0.1, 0.35), make_material(rng, cfg))
        obstacles.append(sphere)
    thin_mat = make_material(rng, cfg, "thin")
    n_thin = int(rng.integers(cfg.n_thin[0], cfg.n_thin[1] + 1))
    for _ in range(n_thin):
        a, b = rng.uniform(lo_xy, hi_xy), rng.uniform(lo_xy, hi_xy)
        r = rng.uniform(0.01, 0.04)
        h = min(ceiling, rng.uniform(1.0, 3.0))
        kind = rng.integers(3)
        if kind == 0:  # a single pole
            add_cylinder((*a, 0.0), (*a, h), r * 2, thin_mat, segments=10)
            obstacles.append(np.array([a[0], a[1], h / 2, h / 2 + 0.1]))
            continue
        for p in (a, b):  # two posts and a wire (kind 1) or a rail (kind 2) between their tops
            add_cylinder((*p, 0.0), (*p, h), r * 2, thin_mat, segments=10)
            obstacles.extend(thin_obstacles((*p, 0.0), (*p, h), r * 2))
        zs = [h * 0.98] if kind == 1 else [h * 0.5, h * 0.95]
        for z in zs:
            add_cylinder((*a, z), (*b, z), r * (0.5 if kind == 1 else 1.0), thin_mat, segments=8)
            obstacles.extend(thin_obstacles((*a, z), (*b, z), r))
    return obstacles, targets


def _wall(length: float, height: float, opening, centre_uv, yaw: float, mat, thickness: float = 0.12) -> None:
    """A wall in its own (u along, z up) plane, centred at world xy `centre_uv`, with an optional
    rectangular opening (u0, u1, z0, z1): it is built from the boxes around the hole."""
    pieces = [(-length / 2, length / 2, 0.0, height)]
    if opening is not None:
        u0, u1, z0, z1 = opening
        pieces = [(-length / 2, u0, 0.0, height), (u1, length / 2, 0.0, height), (u0, u1, z1, height)]
        if z0 > 0:
            pieces.append((u0, u1, 0.0, z0))
    c, s = math.cos(yaw), math.sin(yaw)
    for a, b, za, zb in pieces:
        if b - a < 1e-3 or zb - za < 1e-3:
            continue
        u = (a + b) / 2
        centre = (centre_uv[0] + c * u, centre_uv[1] + s * u, (za + zb) / 2)
        add_box(centre, (b - a, thickness, zb - za), mat, yaw)


def _enclosure(rng: np.random.Generator, cfg: SceneConfig) -> None:
    """Ground slab to the dome and the dome itself (camera-visible only), so every ray hits geometry."""
    add_box((0, 0, -0.06), (2 * DOME_RADIUS, 2 * DOME_RADIUS, 0.1), make_material(rng, cfg, "ground", (0.3, 2.0)))
    bm = bmesh.new()
    bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=DOME_RADIUS)
    dome = _from_bmesh("dome", bm, make_sky_material(rng))
    for name in ("diffuse", "glossy", "shadow", "transmission", "volume_scatter"):
        setattr(dome, f"visible_{name}", False)


def _light(kind: str, location, energy: float, colour, **props) -> bpy.types.Object:
    data = bpy.data.lights.new(kind.lower(), kind)
    data.energy, data.color = energy, colour
    for k, v in props.items():
        setattr(data, k, v)
    obj = bpy.data.objects.new(kind.lower(), data)
    obj.location = location
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _warm_white(rng: np.random.Generator) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(rng.uniform(0.0, 0.17) if rng.random() < 0.7 else rng.random(),
                               rng.uniform(0.0, 0.35), 1.0)  # fmt: skip


def _sun(rng: np.random.Generator, energy: tuple[float, float]) -> None:
    sun = _light("SUN", (0, 0, 10), rng.uniform(*energy), _warm_white(rng), angle=np.radians(rng.uniform(0.5, 5)))
    sun.rotation_euler = (rng.uniform(0.2, 1.1), 0.0, rng.uniform(0, 2 * np.pi))  # tilt from zenith, azimuth


def _world(rng: np.random.Generator, strength: tuple[float, float]) -> None:
    world = bpy.data.worlds.new("world")
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = _colour(rng)
    bg.inputs["Strength"].default_value = rng.uniform(*strength)
    bpy.context.scene.world = world


def build_room(rng: np.random.Generator, cfg: SceneConfig) -> SceneInfo:
    """A box room with openings, contents and ceiling lights, inside the outdoor enclosure."""
    Lx, Ly, Hz = rng.uniform(4, 9), rng.uniform(4, 9), rng.uniform(2.5, 3.5)
    _enclosure(rng, cfg)
    add_box((0, 0, 0.02), (Lx, Ly, 0.04), make_material(rng, cfg, "floor"))
    add_box((0, 0, Hz + 0.05), (Lx + 0.3, Ly + 0.3, 0.1), make_material(rng, cfg, "ceiling"))
    wall_mat = make_material(rng, cfg, "wall")
    for k, (cx, cy, yaw, length) in enumerate(
        [(0, -Ly / 2, 0.0, Lx), (0, Ly / 2, 0.0, Lx), (-Lx / 2, 0, np.pi / 2, Ly), (Lx / 2, 0, np.pi / 2, Ly)]
    ):
        opening = None
        if rng.random() < 0.5:
            w = rng.uniform(0.8, min(2.5, length - 1.0))
            u0 = rng.uniform(-length / 2 + 0.3, length / 2 - 0.3 - w)
            z0 = 0.0 if rng.random() < 0.4 else rng.uniform(0.6, 1.0)  # door or window
            opening = (u0, u0 + w, z0, min(Hz - 0.3, z0 + rng.uniform(1.0, 2.1)))
        _wall(length + (0.24 if k >= 2 else 0.0), Hz, opening, (cx, cy), yaw, wall_mat)
    obstacles, targets = _add_contents(rng, cfg, (-Lx / 2 + 0.4, -Ly / 2 + 0.4), (Lx / 2 - 0.4, Ly / 2 - 0.4),
                                       (0.3, 1.2), Hz)  # fmt: skip
    size = rng.uniform(0.8, 2.0)
    _light("AREA", (rng.uniform(-Lx / 4, Lx / 4), rng.uniform(-Ly / 4, Ly / 4), Hz - 0.02),
           rng.uniform(150, 600) * size, _warm_white(rng), size=size)  # fmt: skip
    for _ in range(rng.integers(0, 3)):
        _light("POINT", (*rng.uniform((-Lx / 3, -Ly / 3), (Lx / 3, Ly / 3)), Hz * rng.uniform(0.6, 0.9)),
               rng.uniform(40, 200), _warm_white(rng), shadow_soft_size=rng.uniform(0.05, 0.3))  # fmt: skip
    _sun(rng, (1.0, 4.0))
    _world(rng, (0.05, 0.4))
    targets.append(np.array([0.0, 0.0, Hz * 0.4]))
    lo, hi = np.array([-Lx / 2 + 0.45, -Ly / 2 + 0.45, 0.5]), np.array([Lx / 2 - 0.45, Ly / 2 - 0.45, Hz - 0.4])
    return SceneInfo("room", CameraBounds(lo, hi, np.array(obstacles).reshape(-1, 4), np.array(targets)))


def build_outdoor(rng: np.random.Generator, cfg: SceneConfig) -> SceneInfo:
    """Ground, dome, scattered primitives and thin structures under a sun."""
    _enclosure(rng, cfg)
    extent = rng.uniform(4, 8)
    obstacles, targets = _add_contents(rng, cfg, (-extent, -extent), (extent, extent), (0.4, 2.2), 4.0, 2)
    _sun(rng, (2.0, 5.0))
    _world(rng, (0.3, 1.0))
    targets.append(np.array([0.0, 0.0, 0.5]))
    lo, hi = np.array([-extent, -extent, 0.3]), np.array([extent, extent, 3.0])
    return SceneInfo("outdoor", CameraBounds(lo, hi, np.array(obstacles).reshape(-1, 4), np.array(targets)))


def reset_scene() -> bpy.types.Scene:
    """Start from an empty factory scene (no default cube, camera or light) and drop orphaned data."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def build_scene(rng: np.random.Generator, cfg: SceneConfig | None = None) -> SceneInfo:
    """Reset Blender and build one random scene of a layout drawn from cfg.layouts."""
    cfg = cfg or SceneConfig()
    reset_scene()
    layout = str(cfg.layouts[rng.integers(len(cfg.layouts))])
    return build_room(rng, cfg) if layout == "room" else build_outdoor(rng, cfg)
