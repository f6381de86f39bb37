"""Bad input on the command line: one clear line, exit code 2, and no cluster started for it."""

from __future__ import annotations

from tests.taskflow.stream.stream_helpers import digits_images, run_cli, write_array
from tests.taskflow.stream.test_stream_faults import MODEL


def test_a_plain_file_as_input_is_named_as_a_file(tmp_path):
    plain = tmp_path / "images.bin"
    plain.write_bytes(b"\0" * 64)
    result = run_cli(MODEL, "-i", str(plain), "-o", str(tmp_path / "out.zarr"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a file; expected a Zarr store" in result.stderr
    assert "dashboard" not in result.stdout          # refused before any cluster started
    assert not (tmp_path / "out.zarr").exists()


def test_a_zero_batch_size_is_refused(tmp_path):
    src = write_array(tmp_path / "src.zarr", digits_images(16), 8)
    result = run_cli(MODEL, "-i", src, "-o", str(tmp_path / "out.zarr"), "--batch-size", "0")
    assert result.returncode == 2 and "--batch-size" in result.stderr
    assert "'0' is not an integer >= 1" in result.stderr
