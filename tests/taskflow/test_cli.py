"""The ``taskflow`` command line, run as a user would (a subprocess of the installed script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conformance.light_models import LIGHT_MODELS, light_path


def taskflow(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("taskflow")
    cmd = [exe] if exe else [sys.executable, "-m", "taskflow.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_info_on_every_light_model(name):
    result = taskflow("info", light_path(name), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["inputs"][0][2][0] == "N"
    assert info["parameters"] > 1e6 and info["flops_per_sample"] > 1e8
    assert any("batch" in note for note in info["notes"])


def test_info_text_names_ops_params_flops():
    result = taskflow("info", light_path("squeezenet"))
    assert result.returncode == 0, result.stderr
    for word in ("params", "FLOP per sample", "Conv", "optimised", "batch"):
        assert word in result.stdout


def test_info_on_a_corrupt_file_says_so(tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(open(light_path("squeezenet"), "rb").read()[:1000])
    result = taskflow("info", str(bad))
    assert result.returncode == 2
    assert "truncated.onnx" in result.stderr and "Traceback" not in result.stderr


def test_info_on_a_missing_file():
    result = taskflow("info", "/nonexistent/model.onnx")
    assert result.returncode == 2 and "/nonexistent/model.onnx" in result.stderr
