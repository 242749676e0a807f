"""Build the Parallax Blender extension: blender_addon/ + vendored backend modules + pyzmq wheels.

    python scripts/build_extension.py                 # folder build/extension/parallax (no wheels)
    python scripts/build_extension.py --wheels --zip  # + pyzmq wheels for every platform, one zip each

The add-on imports five numpy-only backend modules (wire protocol, job specs, client, camera
conventions, PLY). They are copied here, at build time, into `parallax/_vendor/`, so git holds one
copy of each. pyzmq wheels are downloaded with `pip download --only-binary=:all:` for every Blender
platform and both Python ABIs Blender ships (cp311 for Blender 4.2–5.0, cp312-abi3 for 3.12+), cached
under build/wheels, and listed in the built manifest; Blender's own `blender_ext.py build
--split-platforms` then zips one package per platform. Tests build without wheels (no network) and
load the built folder as an extension; `load_in_blender` below is that loader (also used by the demo).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSION_ID = "parallax"
# Backend modules the add-on imports, vendored unchanged (numpy + stdlib + zmq only).
VENDORED = ("backend/server/protocol.py", "backend/server/specs.py", "backend/server/client.py",
            "backend/geometry/cameras.py", "backend/data/ply.py")
PYZMQ_VERSION = "27.3.0"  # keep in step with requirements.lock
# Blender platform -> pip platform tags that pyzmq publishes wheels for (first match wins).
PLATFORMS = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"),
    "macos-x64": ("macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2"),
    "windows-x64": ("win_amd64",),
    "windows-arm64": ("win_arm64",),
}
PYTHONS = ("3.11", "3.13")  # 3.13 resolves to pyzmq's cp312-abi3 wheel (Blender 5.1+)


def blender_ext_script() -> Path:
    """Blender's extension CLI (validate/build), shipped inside the bpy wheel; runs under plain Python."""
    import importlib.util

    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpy wheel is not installed: cannot find blender_ext.py")
    base = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise FileNotFoundError(f"no scripts/addons_core/bl_pkg/cli/blender_ext.py under {base}")
    return found[-1]


def download_wheels(cache: Path) -> list[Path]:
    """pyzmq wheels for every (platform, Python) pair into `cache` (skips pairs already cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    for platform, tags in PLATFORMS.items():
        for python in PYTHONS:
            marker = cache / f".{platform}-{python}.done"
            if marker.exists():
                continue
            cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--quiet",
                   "--python-version", python, "--dest", str(cache), f"pyzmq=={PYZMQ_VERSION}"]
            for tag in tags:
                cmd += ["--platform", tag]
            print(f"build_extension: pyzmq wheel for {platform} / Python {python}", flush=True)
            subprocess.run(cmd, check=True)
            marker.touch()
    return sorted(cache.glob("pyzmq-*.whl"))


def _manifest_with_wheels(text: str, wheels: list[str]) -> str:
    """The root manifest plus `wheels` and `platforms` (inserted before the first table)."""
    if re.search(r"^(wheels|platforms)\s*=", text, re.M):
        raise ValueError("blender_manifest.toml must not list wheels/platforms: the build adds them")
    if not wheels:
        return text
    lines = ["wheels = [", *(f'  "./wheels/{w}",' for w in wheels), "]",
             "platforms = [" + ", ".join(f'"{p}"' for p in PLATFORMS) + "]", ""]
    head, sep, tail = text.partition("\n[")
    return head.rstrip("\n") + "\n\n" + "\n".join(lines) + sep + tail


def assemble(out: Path, wheels: list[Path] = ()) -> Path:
    """Write the extension folder `out/parallax` (replacing an old one); returns its path."""
    ext = out / EXTENSION_ID
    if ext.exists():
        shutil.rmtree(ext)
    shutil.copytree(ROOT / "blender_addon", ext, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    vendor = ext / "_vendor"
    vendor.mkdir()
    (vendor / "__init__.py").write_text('"""Copied by scripts/build_extension.py: do not edit."""\n')
    for rel in VENDORED:
        shutil.copy2(ROOT / rel, vendor / Path(rel).name)
    if wheels:
        (ext / "wheels").mkdir()
        for w in wheels:
            shutil.copy2(w, ext / "wheels" / w.name)
    manifest = (ROOT / "blender_manifest.toml").read_text()
    (ext / "blender_manifest.toml").write_text(_manifest_with_wheels(manifest, [w.name for w in wheels]))
    return ext


def validate(ext: Path) -> str:
    """Run Blender's validator on the folder; returns its output, raises ValueError when it fails."""
    proc = subprocess.run([sys.executable, str(blender_ext_script()), "validate", str(ext)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"blender_ext validate failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def package(ext: Path, dist: Path, split: bool) -> list[Path]:
    """Zip with Blender's own builder (one zip per platform when `split`); returns the zips."""
    dist.mkdir(parents=True, exist_ok=True)
    before = set(dist.glob("*.zip"))
    cmd = [sys.executable, str(blender_ext_script()), "build", "--source-dir", str(ext), "--output-dir", str(dist)]
    if split:
        cmd.append("--split-platforms")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"blender_ext build failed:\n{proc.stdout}{proc.stderr}")
    return sorted(set(dist.glob("*.zip")) - before) or sorted(dist.glob("*.zip"))


def load_in_blender(ext: Path, repo_module: str = "parallax_dev"):
    """Enable the built extension `ext` in the running bpy as `bl_ext.<repo_module>.parallax`.

    Adds a user repository whose directory is ext's parent, so the add-on gets its real __package__
    (preferences, relative imports). Returns the add-on module.
    """
    import addon_utils
    import bpy

    prefs = bpy.context.preferences
    repo = next((r for r in prefs.extensions.repos if r.module == repo_module), None)
    if repo is None:
        repo = prefs.extensions.repos.new(name=repo_module, module=repo_module,
                                          custom_directory=str(ext.parent), source="USER")
    module = addon_utils.enable(f"bl_ext.{repo_module}.{EXTENSION_ID}", default_set=True, handle_error=_raise)
    if module is None:
        raise RuntimeError(f"could not enable bl_ext.{repo_module}.{EXTENSION_ID} from {ext}")
    return module


def _raise(exc: BaseException) -> None:
    raise exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "extension", help="build folder")
    parser.add_argument("--wheels", action="store_true", help="download and bundle pyzmq wheels (network)")
    parser.add_argument("--wheel-cache", type=Path, default=ROOT / "build" / "wheels")
    parser.add_argument("--zip", action="store_true", help="zip with blender_ext build (per platform with --wheels)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    args = parser.parse_args(argv)
    wheels = download_wheels(args.wheel_cache) if args.wheels else []
    ext = assemble(args.out, wheels)
    print(validate(ext).strip() or "blender_ext validate: ok")
    print(f"build_extension: extension folder {ext}")
    if args.zip:
        for z in package(ext, args.dist, split=bool(wheels)):
            print(f"build_extension: {z} ({z.stat().st_size >> 10} KiB)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
