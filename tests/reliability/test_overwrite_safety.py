"""``overwrite`` replaces taskflow's own outputs only: never a user's folder, a foreign Zarr
group or a file (issue 14, case 3). Each refusal happens before any cluster starts."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.stream.manifest import TargetExistsError
from tests.taskflow.stream.stream_helpers import digits_images, digits_model, run_cli, write_array
from tests.taskflow.stream.test_stream_faults import MODEL


@pytest.fixture
def source(tmp_path) -> str:
    return write_array(tmp_path / "src.zarr", digits_images(32).astype(np.float32) / 16, 16)


def test_a_user_folder_is_never_deleted(tmp_path, source):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(TargetExistsError, match="not written by taskflow"):
        tf.infer_zarr(digits_model(), source, str(folder), overwrite=True)
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_foreign_zarr_group_is_never_deleted(tmp_path, source):
    other = zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    other.create_array("precious", shape=(3,), dtype="i4")[:] = [1, 2, 3]
    with pytest.raises(TargetExistsError, match="nothing was deleted"):
        tf.infer_zarr(digits_model(), source, str(tmp_path / "other.zarr"), overwrite=True)
    assert zarr.open_group(str(tmp_path / "other.zarr"), mode="r")["precious"][:].tolist() \
        == [1, 2, 3]


def test_a_file_target_is_a_clear_error_from_the_cli(tmp_path, source):
    target = tmp_path / "out.zarr"
    target.write_text("not a store")
    result = run_cli(MODEL, "-i", source, "-o", str(target), "--overwrite")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a file" in result.stderr and target.read_text() == "not a store"
