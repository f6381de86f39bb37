"""The built wheel holds every module and data file of the source tree, at its installed name.

An editable install reads the source folders directly, so a package missing from the wheel
(as ``taskflow.ops.cpu`` once was) passes every other test. This one builds the real wheel.
"""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import taskflow

ROOT = Path(__file__).resolve().parents[1]
#: source folder -> where it lands in site-packages (see setup.py)
ROOTS = {"taskflow": "taskflow", "ops": "taskflow/ops", "schedulers": "taskflow/schedulers"}
SHIPPED = {".py", ".onnx", ".npz", ".json", ".yaml"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "No matching distribution" in done.stderr:
        pytest.skip(f"cannot fetch the build backend here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("taskflow-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def _source_files() -> dict[str, Path]:
    tracked = subprocess.run(["git", "ls-files", *ROOTS], cwd=ROOT, capture_output=True,
                             text=True)
    if tracked.returncode == 0 and tracked.stdout:
        paths = [ROOT / p for p in tracked.stdout.split()]
    else:  # not a checkout: every file below the roots
        paths = [p for r in ROOTS for p in (ROOT / r).rglob("*") if p.is_file()]
    files = {}
    for path in paths:
        rel = path.relative_to(ROOT)
        if path.suffix in SHIPPED and "__pycache__" not in rel.parts:
            files["/".join([ROOTS[rel.parts[0]], *rel.parts[1:]])] = path
    return files


def test_wheel_has_every_source_module_and_data_file(wheel):
    names = set(wheel.namelist())
    missing = sorted(set(_source_files()) - names)
    assert not missing, f"in the source tree but not in the wheel: {missing}"
    assert any(n == "taskflow/ops/cpu/__init__.py" for n in names)


def test_wheel_installs_nothing_outside_taskflow(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert tops == {"taskflow", f"taskflow-{taskflow.__version__}.dist-info"}, tops


def test_wheel_metadata(wheel):
    meta_name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(wheel.read(meta_name))
    assert meta["Version"] == taskflow.__version__
    runtime = {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
               for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r}
    assert {"dask", "numpy", "numba", "zarr", "onnx"} <= runtime
    assert not runtime & {"pytest", "onnxruntime", "hypothesis", "torch", "sphinx"}, runtime
    entry = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    assert "taskflow = taskflow.cli:main" in wheel.read(entry).decode()
