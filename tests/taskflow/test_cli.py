"""The ``taskflow`` command line, run as a user would (a subprocess of the installed script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conformance.light_models import light_path, some_light_models


def taskflow(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("taskflow")
    cmd = [exe] if exe else [sys.executable, "-m", "taskflow.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", some_light_models("squeezenet", "resnet50"))
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


def test_no_command_prints_the_help():
    result = taskflow()
    assert result.returncode == 0, result.stderr
    for name in ("info", "demo", "run", "bench", "warmup", "--version"):
        assert name in result.stdout


def test_version_is_the_package_version():
    import taskflow as tf

    result = taskflow("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"taskflow {tf.__version__}"


def test_batch_size_is_spelled_the_same_by_every_command():
    for command in ("run", "bench", "demo"):
        result = taskflow(command, "--help")
        assert "--batch-size" in result.stdout, command
        assert "--batch " not in result.stdout and "--batch\n" not in result.stdout, command


def test_an_unexpected_error_is_one_line_unless_debug(tmp_path):
    # a directory where a model file is expected fails inside onnx, not in our own checks
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    quiet = taskflow("info", str(folder))
    assert quiet.returncode in (1, 2) and "Traceback" not in quiet.stderr
    assert len(quiet.stderr.strip().splitlines()) == 1 and "model.onnx" in quiet.stderr
    loud = taskflow("info", str(folder), "--debug")
    assert loud.returncode != 0 and "Traceback" in loud.stderr
