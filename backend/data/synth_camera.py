"""Camera trajectories for synthetic clips, in plain numpy (no bpy): deterministic from a Generator.

Every trajectory is a path of eye points and look-at targets in a Z-up world (Blender's), turned into
OpenCV-axed camera-to-world poses by `look_at` (x right, y down, z forward), plus a focal length in
millimetres per frame. Motion families, as in the camera moves of film grammar:

- orbit: the eye circles a target at a fixed radius while looking at it (turntable / arc shot);
- dolly: the eye moves along the line to a fixed target, in or out;
- pan:   the eye stays (almost) still and the view direction sweeps in yaw;
- walk:  the eye walks forward along a heading, looking ahead (a first-person walk).

Any family may get a handheld shake (a smooth sum of sinusoids on the eye, the target and the roll)
and a zoom (lens varying smoothly within the clip). A trajectory is accepted only when every eye lies
inside the scene's free box, keeps a margin from every obstacle sphere and never looks straight up or
down (where look-at is ill-defined); otherwise another is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

KINDS = ("orbit", "dolly", "pan", "walk")
WORLD_UP = np.array([0.0, 0.0, 1.0])


@dataclass
class CameraBounds:
    """Where cameras may go in a scene, and what is worth looking at (world units, Z up)."""

    lo: np.ndarray  # (3,) min corner of the box every eye must stay inside
    hi: np.ndarray  # (3,) max corner of that box
    obstacles: np.ndarray  # (M, 4) bounding spheres (x, y, z, radius) an eye must stay out of
    targets: np.ndarray  # (T, 3) look-at candidates (object centres, room centre), T >= 1

    def __post_init__(self) -> None:
        self.lo = np.asarray(self.lo, dtype=np.float64).reshape(3)
        self.hi = np.asarray(self.hi, dtype=np.float64).reshape(3)
        self.obstacles = np.asarray(self.obstacles, dtype=np.float64).reshape(-1, 4)
        self.targets = np.asarray(self.targets, dtype=np.float64).reshape(-1, 3)
        if not np.all(self.hi > self.lo):
            raise ValueError(f"CameraBounds.hi {self.hi} must exceed lo {self.lo} on every axis")
        if len(self.targets) == 0:
            raise ValueError("CameraBounds.targets must hold at least one point")

    def free(self, eyes: np.ndarray, margin: float) -> np.ndarray:
        """Per eye (N, 3): inside the box and at least `margin` outside every obstacle sphere. (N,) bool."""
        inside = np.all((eyes >= self.lo) & (eyes <= self.hi), axis=-1)
        if len(self.obstacles) == 0:
            return inside
        d = np.linalg.norm(eyes[:, None, :] - self.obstacles[None, :, :3], axis=-1)  # (N, M)
        return inside & np.all(d >= self.obstacles[None, :, 3] + margin, axis=-1)


@dataclass
class TrajectoryConfig:
    """How trajectories are drawn. Lengths in world units (metres), angles in degrees, lens in mm."""

    kinds: tuple[str, ...] = KINDS  # motion families drawn uniformly
    lens_range: tuple[float, float] = (14.0, 50.0)  # focal length bounds (36 mm sensor width)
    zoom_prob: float = 0.5  # probability that the lens changes within the clip
    zoom_max: float = 0.4  # max |log(lens_end / lens_start)|
    shake_prob: float = 0.5  # probability of a handheld shake
    shake_pos: float = 0.03  # shake amplitude of the eye (world units)
    shake_rot: float = 0.6  # shake amplitude of view direction and roll (degrees)
    orbit_sweep: tuple[float, float] = (8.0, 45.0)  # |total orbit angle| over the clip
    pan_sweep: tuple[float, float] = (8.0, 40.0)  # |total yaw sweep| over the clip
    dolly_change: tuple[float, float] = (0.15, 0.45)  # |relative change of distance to target|
    walk_length: tuple[float, float] = (0.4, 2.5)  # distance walked over the clip
    margin: float = 0.3  # clearance from obstacle spheres
    max_tries: int = 200  # draws before giving up

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise ValueError(f"TrajectoryConfig.kinds must be a non-empty subset of {KINDS}, got {self.kinds}")
        lo, hi = self.lens_range
        if not 0 < lo <= hi:
            raise ValueError(f"TrajectoryConfig.lens_range must satisfy 0 < lo <= hi, got {self.lens_range}")
        for name in ("zoom_prob", "shake_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"TrajectoryConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_tries < 1:
            raise ValueError(f"TrajectoryConfig.max_tries must be >= 1, got {self.max_tries}")


@dataclass
class Trajectory:
    """A camera path: OpenCV-axed poses and a lens per frame."""

    c2w: np.ndarray  # (F, 4, 4) camera-to-world, OpenCV axes (x right, y down, z forward), Z-up world
    lens: np.ndarray  # (F,) focal length in mm for a 36 mm sensor width
    kind: str  # motion family, one of KINDS
    shake: bool = False  # whether a handheld shake was added
    info: dict = field(default_factory=dict)  # the drawn parameters, for logs


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = WORLD_UP) -> np.ndarray:
    """OpenCV-axed camera-to-world poses looking from `eye` at `target`. eye, target: (..., 3) → (..., 4, 4).

    z (forward) = unit(target − eye); x (right) = unit(z × up); y (down) = z × x, so that x × y = z
    (right-handed) and y points towards −up on screen. Undefined when forward ∥ up.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    f = target - eye
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    r = np.cross(f, np.broadcast_to(up, f.shape))
    r = r / np.linalg.norm(r, axis=-1, keepdims=True)
    d = np.cross(f, r)
    out = np.zeros((*eye.shape[:-1], 4, 4))
    out[..., :3, 0], out[..., :3, 1], out[..., :3, 2], out[..., :3, 3] = r, d, f, eye
    out[..., 3, 3] = 1.0
    return out


def roll_about_forward(c2w: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Rotate each camera about its own optical axis by `roll` radians. c2w: (F, 4, 4), roll: (F,)."""
    c, s = np.cos(roll), np.sin(roll)
    Rz = np.zeros((len(roll), 4, 4))
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1] = c, -s, s, c
    Rz[:, 2, 2] = Rz[:, 3, 3] = 1.0
    return c2w @ Rz


def smooth_noise(rng: np.random.Generator, n: int, dims: int, octaves: int = 3) -> np.ndarray:
    """Smooth zero-mean noise in [-1, 1] per dimension: a sum of sinusoids with random phases. (n, dims).

    Frequencies are in cycles per frame (0.02..0.25), so neighbouring frames stay close: a shake, not
    a jump.
    """
    t = np.arange(n, dtype=np.float64)[:, None]  # (n, 1)
    out = np.zeros((n, dims))
    for k in range(octaves):
        freq = rng.uniform(0.02, 0.25, size=dims) / (1 + k)
        phase = rng.uniform(0, 2 * np.pi, size=dims)
        out += np.sin(2 * np.pi * freq * t + phase) / (2**k)
    return out / sum(1 / 2**k for k in range(octaves))


def _ramp(n: int) -> np.ndarray:
    """Smoothstep progress 0..1 over n frames (ease in and out, like a real camera move)."""
    s = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    return s * s * (3 - 2 * s)


def _signed(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi) * rng.choice([-1.0, 1.0]))


def _orbit(rng, n, b: CameraBounds, cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    target = b.targets[rng.integers(len(b.targets))]
    half = 0.5 * float(np.min((b.hi - b.lo)[:2]))
    radius = rng.uniform(min(1.0, half), max(1.0, 1.6 * half))
    height = rng.uniform(b.lo[2], b.hi[2])
    a = rng.uniform(0, 2 * np.pi) + np.radians(_signed(rng, cfg.orbit_sweep)) * _ramp(n)
    eyes = np.stack([target[0] + radius * np.cos(a), target[1] + radius * np.sin(a), np.full(n, height)], -1)
    return eyes, np.broadcast_to(target, (n, 3)).copy(), {"radius": radius, "target": target}


def _dolly(rng, n, b: CameraBounds, cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    target = b.targets[rng.integers(len(b.targets))]
    eye0 = rng.uniform(b.lo, b.hi)
    r0 = np.linalg.norm(eye0 - target)
    r1 = r0 * (1 + _signed(rng, cfg.dolly_change))
    u = (eye0 - target) / max(r0, 1e-9)
    r = r0 + (r1 - r0) * _ramp(n)
    return target + r[:, None] * u, np.broadcast_to(target, (n, 3)).copy(), {"r0": r0, "r1": r1, "target": target}


def _pan(rng, n, b: CameraBounds, cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    eye = rng.uniform(b.lo, b.hi)
    target0 = b.targets[rng.integers(len(b.targets))]
    yaw = np.radians(_signed(rng, cfg.pan_sweep)) * _ramp(n)
    v = target0 - eye
    c, s = np.cos(yaw), np.sin(yaw)
    targets = eye + np.stack([c * v[0] - s * v[1], s * v[0] + c * v[1], np.full(n, v[2])], -1)
    drift = rng.normal(0, 0.05, size=3) * _ramp(n)[:, None]  # a little translation keeps parallax
    return eye + drift, targets, {}


def _walk(rng, n, b: CameraBounds, cfg: TrajectoryConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    eye0 = rng.uniform(b.lo, b.hi)
    goal = b.targets[rng.integers(len(b.targets))]
    heading = goal - eye0
    heading[2] = 0.0
    heading = heading / max(np.linalg.norm(heading), 1e-9)
    length = rng.uniform(*cfg.walk_length)
    eyes = eye0 + (length * _ramp(n))[:, None] * heading
    eyes[:, 2] += 0.02 * np.sin(np.linspace(0, rng.uniform(2, 6) * np.pi, n))  # step bob
    look_ahead = rng.uniform(3.0, 6.0)
    pitch = rng.uniform(-0.25, 0.1)  # slightly down, as people look
    targets = eyes + look_ahead * (heading + np.array([0.0, 0.0, pitch]))
    return eyes, targets, {"length": length}


_FAMILIES = {"orbit": _orbit, "dolly": _dolly, "pan": _pan, "walk": _walk}


def _lens(rng: np.random.Generator, n: int, cfg: TrajectoryConfig) -> np.ndarray:
    """Lens per frame: log-uniform start, optional smooth zoom, always within cfg.lens_range."""
    lo, hi = cfg.lens_range
    start = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    end = start
    if rng.random() < cfg.zoom_prob:
        end = float(np.clip(start * np.exp(rng.uniform(-cfg.zoom_max, cfg.zoom_max)), lo, hi))
    return start + (end - start) * _ramp(n)


def _valid(eyes: np.ndarray, targets: np.ndarray, b: CameraBounds, margin: float) -> bool:
    fwd = targets - eyes
    norm = np.linalg.norm(fwd, axis=-1)
    if np.any(norm < 0.3):
        return False
    steep = np.abs(fwd[:, 2] / norm) > 0.9  # within ~25° of vertical: look-at roll becomes unstable
    return bool(b.free(eyes, margin).all() and not steep.any())


def sample_trajectory(
    rng: np.random.Generator, n_frames: int, bounds: CameraBounds, cfg: TrajectoryConfig | None = None
) -> Trajectory:
    """Draw a valid trajectory of `n_frames` cameras in `bounds` (rejection sampling over cfg.max_tries).

    Raises RuntimeError when no draw satisfies the bounds (a scene with no free room for a camera).
    """
    cfg = cfg or TrajectoryConfig()
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    for _ in range(cfg.max_tries):
        kind = str(cfg.kinds[rng.integers(len(cfg.kinds))])
        eyes, targets, info = _FAMILIES[kind](rng, n_frames, bounds, cfg)
        shake = bool(rng.random() < cfg.shake_prob)
        roll = np.zeros(n_frames)
        if shake:
            dist = np.linalg.norm(targets - eyes, axis=-1, keepdims=True)  # (F, 1)
            eyes = eyes + cfg.shake_pos * smooth_noise(rng, n_frames, 3)
            targets = targets + np.radians(cfg.shake_rot) * dist * smooth_noise(rng, n_frames, 3)
            roll = np.radians(cfg.shake_rot) * smooth_noise(rng, n_frames, 1)[:, 0]
        if not _valid(eyes, targets, bounds, cfg.margin):
            continue
        c2w = roll_about_forward(look_at(eyes, targets), roll)
        return Trajectory(c2w=c2w, lens=_lens(rng, n_frames, cfg), kind=kind, shake=shake, info=info)
    raise RuntimeError(f"no valid camera trajectory in {cfg.max_tries} tries (bounds {bounds.lo}..{bounds.hi})")
