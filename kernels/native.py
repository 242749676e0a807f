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
import shlex
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
_FORKED = False  # set in a child process by the at-fork hook below


def _after_fork_in_child() -> None:
    global _FORKED
    _FORKED = True


if hasattr(os, "register_at_fork"):  # registered at import: kernels.splat imports this module early
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forked_child() -> bool:
    """True in a process forked after this module was imported (multiprocessing, DataLoader workers):
    there GNU OpenMP's thread pool, shared with torch, cannot be used with more than one thread."""
    return _FORKED


def enabled() -> bool:
    """Native kernels allowed unless PARALLAX_NO_NATIVE=1."""
    return os.environ.get("PARALLAX_NO_NATIVE", "0") != "1"


def compiler() -> list[str] | None:
    """The C compiler command: $CC (which may carry arguments, e.g. "ccache gcc"), else cc, gcc or clang."""
    env = shlex.split(os.environ.get("CC", ""))
    for cand in ([env] if env else []) + [["cc"], ["gcc"], ["clang"]]:
        if shutil.which(cand[0]):
            return cand
    return None


def _private_dir(path: Path) -> Path:
    """`path` created if needed; refused (OSError) unless it is ours and writable by us alone where that
    matters: a library loaded from a folder others can write to would run their code."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise OSError(f"{path} is not a private folder of this user")
    if not os.access(path, os.W_OK):
        raise OSError(f"{path} is not writable")
    return path


def cache_dir() -> Path:
    """$PARALLAX_CACHE/native, else ~/.cache/parallax/native; a private temp folder if that is unusable."""
    root = os.environ.get("PARALLAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "parallax")
    try:
        return _private_dir(Path(root) / "native")
    except OSError:
        user = os.getuid() if hasattr(os, "getuid") else "user"
        return _private_dir(Path(tempfile.gettempdir()) / f"parallax-native-{user}")


@functools.cache
def _machine_tag(cc: tuple[str, ...]) -> str:
    """What a compiled library depends on beyond its source: compiler version, OS, CPU model and flags."""
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = next((line for line in f if line.startswith(("flags", "Features"))), "")
    return f"{version}|{platform.system()}|{platform.machine()}|{platform.processor()}|{cpu}"


def _flag_sets() -> list[list[str]]:
    """Extra flags to try in order. No OpenMP on macOS: Apple's clang lacks it, and a Homebrew libomp
    beside the one torch ships aborts the process ("OMP: Error #15")."""
    if platform.system() == "Darwin":
        return [s for s in FLAG_SETS if "-fopenmp" not in s]
    return list(FLAG_SETS)


def _compile(cc: list[str], source: Path, target: Path) -> str | None:
    """Compile `source` into `target` with the first flag set that works; the error text on failure."""
    errors = []
    for extra in _flag_sets():
        fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=target.parent)
        os.close(fd)
        cmd = [*cc, *BASE_FLAGS, *extra, str(source), "-o", tmp, "-lm"]
        try:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:
                done = subprocess.CompletedProcess(cmd, 1, "", str(exc))
            if done.returncode == 0:
                os.replace(tmp, target)
        finally:  # a failed, interrupted or renamed build: no temporary left (a failed link may have removed it)
            Path(tmp).unlink(missing_ok=True)
        if done.returncode == 0:
            if errors:
                log.warning("native kernel %s built without %s", source.stem, " ".join(FLAG_SETS[0]))
            return None
        errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-400:]}")
    return "\n".join(errors)


@functools.cache
def load(name: str) -> ctypes.CDLL | None:
    """The shared library built from kernels/csrc/<name>.c (built now if not cached), or None; never raises
    for a missing or broken compiler, an unwritable cache or a library that will not load."""
    if not enabled():
        _BUILD_ERRORS[name] = "disabled by PARALLAX_NO_NATIVE=1"
        return None
    cc = compiler()
    if cc is None:
        _BUILD_ERRORS[name] = "no C compiler found (set CC)"
        return None
    try:
        return _build_and_load(name, cc)
    except OSError as exc:  # cache folder unusable, disk full, library for another architecture...
        _BUILD_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        log.warning("native kernel %s unavailable; using the torch path: %s", name, exc)
        return None


def _build_and_load(name: str, cc: list[str]) -> ctypes.CDLL | None:
    source = CSRC / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes())
    digest.update(repr((BASE_FLAGS, _flag_sets(), _machine_tag(tuple(cc)))).encode())
    target = cache_dir() / f"{name}-{digest.hexdigest()[:16]}.so"
    if target.exists():
        try:
            return ctypes.CDLL(str(target))
        except OSError:  # truncated or foreign: build it again below
            target.unlink(missing_ok=True)
    error = _compile(cc, source, target)
    if error is not None:
        _BUILD_ERRORS[name] = error
        log.warning("native kernel %s could not be built; using the torch path:\n%s", name, error)
        return None
    return ctypes.CDLL(str(target))


def build_error(name: str) -> str | None:
    """Why `load(name)` returned None, if it did."""
    return _BUILD_ERRORS.get(name)
