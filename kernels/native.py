"""Build and load the project's C kernels (kernels/csrc/*.c) as shared libraries, at first use.

They are compiled on the user's machine, like TorchInductor's CPU code: `cc -O3 -march=native` with
OpenMP, FMA contraction off and no fast-math (the kernels must round exactly like the torch
reference). A library is cached under `$PARALLAX_CACHE/native` (default `~/.cache/parallax/native`)
by a hash of its source, the flags, the compiler's version and the CPU, so a rebuild happens only when
one of those changes; a build writes a temporary file and renames it, so concurrent processes never
load half a library. Without a working compiler `load` returns None and callers use the torch paths;
`PARALLAX_NO_NATIVE=1` forces that.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
# Flags every attempt shares: exact IEEE float32 (no contraction into FMA, no fast-math), position-independent.
BASE_FLAGS = ["-O3", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wno-unknown-pragmas"]
# Tried in order until one compiles: tuned for this CPU with OpenMP, portable with OpenMP, single-threaded.
FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], [])
_BUILD_ERRORS: dict[str, str] = {}  # library name -> why it could not be built (for messages and tests)


def enabled() -> bool:
    """Native kernels allowed unless PARALLAX_NO_NATIVE=1."""
    return os.environ.get("PARALLAX_NO_NATIVE", "0") != "1"


def compiler() -> str | None:
    """The C compiler to use: $CC, else cc, gcc or clang from PATH (None when there is none)."""
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return cand
    return None


def cache_dir() -> Path:
    """$PARALLAX_CACHE/native, else ~/.cache/parallax/native; a per-user temp folder if that is not writable."""
    root = os.environ.get("PARALLAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "parallax")
    path = Path(root) / "native"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"parallax-native-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


@functools.cache
def _machine_tag(cc: str) -> str:
    """What a compiled library depends on beyond its source: compiler version, OS, CPU model and flags."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line for line in f if line.startswith(("flags", "Features"))), "")
    return f"{version}|{platform.system()}|{platform.machine()}|{platform.processor()}|{cpu}"


def _compile(cc: str, source: Path, target: Path) -> str | None:
    """Compile `source` into `target` with the first flag set that works; the error text on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *BASE_FLAGS, *extra, str(source), "-o", tmp, "-lm"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            done = subprocess.CompletedProcess(cmd, 1, "", str(exc))
        if done.returncode == 0:
            os.replace(tmp, target)
            return None
        os.unlink(tmp)
        errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-400:]}")
    return "\n".join(errors)


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The shared library built from kernels/csrc/<name>.c (built now if not cached), or None."""
    if not enabled():
        _BUILD_ERRORS[name] = "disabled by PARALLAX_NO_NATIVE=1"
        return None
    cc = compiler()
    if cc is None:
        _BUILD_ERRORS[name] = "no C compiler found (set CC)"
        return None
    source = CSRC / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes())
    digest.update(repr((BASE_FLAGS, FLAG_SETS, _machine_tag(cc))).encode())
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        error = _compile(cc, source, target)
        if error is not None:
            _BUILD_ERRORS[name] = error
            log.warning("native kernel %s could not be built; using the torch path:\n%s", name, error)
            return None
    try:
        return ctypes.CDLL(str(target))
    except OSError as exc:  # e.g. a cache shared with another architecture
        _BUILD_ERRORS[name] = f"could not load {target}: {exc}"
        return None


def build_error(name: str) -> str | None:
    """Why `load(name)` returned None, if it did."""
    return _BUILD_ERRORS.get(name)
