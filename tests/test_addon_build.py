"""Building the extension: vendored modules, Blender's validator, per-platform zips, allowed imports."""

from __future__ import annotations

import ast
import base64
import hashlib
import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("bpy")  # blender_ext.py ships inside the bpy wheel (it is not imported here)


@pytest.fixture(scope="module")
def be():
    spec = importlib.util.spec_from_file_location("parallax_build_extension_t", ROOT / "scripts" / "build_extension.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_vendors_backend_modules_unchanged_and_validates(be, tmp_path):
    ext = be.assemble(tmp_path)
    for rel in be.VENDORED:
        assert (ext / "_vendor" / Path(rel).name).read_bytes() == (ROOT / rel).read_bytes()
    assert not list(ext.rglob("__pycache__"))
    assert "Success" in be.validate(ext)
    zips = be.package(ext, tmp_path / "dist", split=False)
    assert [z.name for z in zips] == ["parallax-0.1.0.zip"]
    with zipfile.ZipFile(zips[0]) as z:
        names = set(z.namelist())
    assert {"blender_manifest.toml", "__init__.py", "_vendor/client.py", "_vendor/cameras.py"} <= names


def test_validator_rejects_a_long_tagline(be, tmp_path):
    ext = be.assemble(tmp_path)
    manifest = ext / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace('tagline = "', 'tagline = "' + "x" * 60))
    with pytest.raises(ValueError, match="tagline"):
        be.validate(ext)


def _wheel(folder: Path, tag: str) -> Path:
    """A minimal but well-formed wheel (PEP 427: dist-info with METADATA, WHEEL, RECORD)."""
    name = f"pxprobe-1.0-{tag}.whl"
    files = {"pxprobe/__init__.py": b"VALUE = 1\n",
             "pxprobe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: pxprobe\nVersion: 1.0\n",
             "pxprobe-1.0.dist-info/WHEEL": f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files["pxprobe-1.0.dist-info/RECORD"] = ("\n".join([*record, "pxprobe-1.0.dist-info/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(folder / name, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return folder / name


def test_split_platform_zips_carry_only_their_wheels(be, tmp_path):
    tags = {"linux-x64": "cp311-cp311-manylinux_2_28_x86_64", "windows-x64": "cp311-cp311-win_amd64",
            "macos-arm64": "cp312-abi3-macosx_11_0_arm64"}
    wheels = [_wheel(tmp_path, t) for t in tags.values()]
    be_platforms = be.PLATFORMS
    ext = be.assemble(tmp_path / "build", wheels)
    text = (ext / "blender_manifest.toml").read_text()
    assert all(f'"./wheels/{w.name}"' in text for w in wheels)
    be.validate(ext)
    zips = be.package(ext, tmp_path / "dist", split=True)
    assert len(zips) == len(be_platforms)
    for platform, tag in tags.items():
        z = next(z for z in zips if z.stem.endswith(platform.replace("-", "_")))
        inside = [n for n in zipfile.ZipFile(z).namelist() if n.endswith(".whl")]
        assert inside == [f"wheels/pxprobe-1.0-{tag}.whl"], (platform, inside)


def test_manifest_must_not_list_wheels_by_hand(be):
    with pytest.raises(ValueError, match="wheels"):
        be._manifest_with_wheels('id = "x"\nwheels = []\n', ["a.whl"])


ALLOWED = {"bpy", "bpy_extras", "mathutils", "addon_utils", "numpy", "zmq"}


def test_addon_imports_nothing_heavy():
    """Inside Blender only bpy, numpy, zmq and the stdlib: never torch, cv2 or the backend package."""
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "blender_addon").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in ALLOWED or top in stdlib, f"{path.name} imports {name}"
