"""``taskflow info`` FLOPs with symbolic dims: which were assumed, or sizes from ``--dim``."""

from __future__ import annotations

import json

import onnx
import pytest

from taskflow.cli import main
from taskflow.errors import InputError

from . import layout_models as lm


@pytest.fixture(scope="module")
def seq_model(tmp_path_factory):
    """Self-attention over a symbolic sequence: (N, seq, E) -> (N, seq, E)."""
    g = lm._G()
    g.ranks = {"x": 3}
    out = g.attention("x", "x", "x")
    model = g.model([lm._fin("x", "N", "seq", lm.E)], out, "seq_attention")
    path = tmp_path_factory.mktemp("info") / "seq.onnx"
    onnx.save(lm.BUILT["seq_attention"], path)
    return model, str(path)


def test_info_names_assumed_dims_and_takes_sizes(seq_model):
    model, _ = seq_model
    at_one = model.info()
    assert at_one.assumed == ["seq"] and at_one.dims == {"N": 1, "seq": 1}
    assert "assumed   seq=1" in str(at_one) and "--dim seq=128" in str(at_one)
    at_8 = model.info(dims={"seq": 8})
    assert at_8.assumed == [] and at_8.dims["seq"] == 8
    assert at_8.flops_per_sample > 8 * at_one.flops_per_sample  # attention grows as seq^2
    # a batch given explicitly still counts FLOPs per sample
    assert model.info(dims={"seq": 8, "N": 4}).flops_per_sample == at_8.flops_per_sample
    with pytest.raises(InputError, match=r"dim\(s\) \['sequence'\].*\['N', 'seq'\]"):
        model.info(dims={"sequence": 8})


def test_cli_dim_option(seq_model, capsys):
    model, path = seq_model
    assert main(["info", path, "--dim", "seq=8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dims"] == {"N": 1, "seq": 8} and out["assumed_dims"] == []
    assert out["flops_per_sample"] == model.info(dims={"seq": 8}).flops_per_sample
    assert main(["info", path]) == 0
    assert "assumed   seq=1" in capsys.readouterr().out
    assert main(["info", path, "--dim", "seq=big"]) == 2
    assert "--dim 'seq=big' is not NAME=SIZE" in capsys.readouterr().err
