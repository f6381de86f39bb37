"""prune: the shrunk model computes what the original computes with the same channels zeroed."""

from __future__ import annotations

import numpy as np
import pytest

from taskflow import Graph, Model, Node, Value
from taskflow.errors import InputError, TaskflowError
from taskflow.frontend import nn
from taskflow.ir.prune import prune

C = 10  # channels: 0.9 of every weight's size is a whole number (270, 900, 40)


def _cnn() -> Graph:
    """Conv-BN-Relu-Conv-Relu-GlobalAvgPool-Flatten-Gemm with a BatchNorm that is not identity."""
    net = nn.Sequential([nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(),
                         nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(),
                         nn.Flatten(), nn.Dense(C, 4)], input_shape=(3, 6, 6), name="cnn")
    rng = np.random.default_rng(1)
    for layer in (net.layers[0], net.layers[3], net.layers[7]):
        layer.params["bias"] = rng.standard_normal(layer.params["bias"].shape).astype(np.float32)
    bn = net.layers[1]
    for key, lo in (("weight", 0.5), ("bias", -1), ("running_mean", -1), ("running_var", 0.5)):
        bn.params[key] = rng.uniform(lo, 1.5, C).astype(np.float32)
    return net.to_graph()


def _mlp() -> Graph:
    return nn.Sequential([nn.Dense(12, 16), nn.ReLU(), nn.Dense(16, 8), nn.Tanh(),
                          nn.Dense(8, 3)], input_shape=(12,), name="mlp").to_graph()


def _residual() -> Graph:
    """x -> conv a -> relu -> conv b -> add(x) -> output: only conv a can lose channels."""
    rng = np.random.default_rng(2)
    shape = ("N", 4, 5, 5)
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    return Graph(
        nodes=[Node("Conv", ["x", "wa"], ["a"], conv, name="conv_a"),
               Node("Relu", ["a"], ["r"]),
               Node("Conv", ["r", "wb"], ["b"], conv, name="conv_b"),
               Node("Add", ["b", "x"], ["y"])],
        inputs=[Value("x", np.float32, shape)], outputs=[Value("y", np.float32, shape)],
        initializers={k: rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
                      for k in ("wa", "wb")},
        values={v: Value(v, np.float32, shape) for v in ("a", "r", "b")}, name="residual")


def _zeroed(graph: Graph, links: list[tuple[str, str | None, str, int]],
            keep: list[tuple[int, ...]]) -> Graph:
    """``graph`` with every channel not in ``keep`` zeroed: producer weight (axis 0 or 1 as
    Gemm/Conv store them) and bias, and the consumer weight's matching inputs (``in_axis``)."""
    g = graph.copy()
    for (w, b, consumer_w, in_axis), kept in zip(links, keep, strict=True):
        drop = np.setdiff1d(np.arange(g.initializers[w].shape[0]), kept)
        g.initializers[w] = g.initializers[w].copy()
        g.initializers[w][drop] = 0
        g.initializers[b] = g.initializers[b].copy()
        g.initializers[b][drop] = 0
        cw = np.moveaxis(g.initializers[consumer_w].copy(), in_axis, 0)
        cw[drop] = 0
        g.initializers[consumer_w] = np.moveaxis(cw, 0, in_axis)
    return g


def _run(graph: Graph, x: np.ndarray) -> np.ndarray:
    return Model(graph, device="reference").run(None, {"input": x})[0]


CNN_LINKS = [("0.weight", "0.bias", "3.weight", 1), ("3.weight", "3.bias", "7.weight", 1)]
MLP_LINKS = [("0.weight", "0.bias", "2.weight", 1), ("2.weight", "2.bias", "4.weight", 1)]


@pytest.mark.parametrize(("build", "links", "shape"), [(_cnn, CNN_LINKS, (5, 3, 6, 6)),
                                                       (_mlp, MLP_LINKS, (5, 12))])
def test_structured_halves_channels_and_matches_zeroed(build, links, shape):
    graph = build()
    pruned, report = prune(graph, 0.5)
    assert [(lay.kept * 2, lay.total) for lay in report.layers] == [
        (lay.total, lay.total) for lay in report.layers]
    assert len(report.layers) == 2
    assert report.params_after < report.params_before == graph.parameter_count()
    assert pruned.parameter_count() == report.params_after
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    reference = _zeroed(graph, links, [lay.channels for lay in report.layers])
    np.testing.assert_allclose(_run(pruned, x), _run(reference, x), rtol=1e-5, atol=1e-5)
    # the cpu kernels run the shrunk model too, with the IR's shapes
    cpu = Model(pruned).run(None, {"input": x})[0]
    np.testing.assert_allclose(cpu, _run(reference, x), rtol=1e-4, atol=1e-4)
    assert graph.parameter_count() == report.params_before  # the original is untouched


def test_model_prune_returns_new_model_with_report():
    model = Model(_cnn())
    before = model.graph.parameter_count()
    pruned = model.prune(0.5)
    assert pruned is not model and model.graph.parameter_count() == before
    assert pruned.prune_report.params_after < pruned.prune_report.params_before
    assert pruned.get_inputs()[0].shape == model.get_inputs()[0].shape


def test_residual_conv_is_skipped_with_reason():
    graph = _residual()
    pruned, report = prune(graph, 0.5)
    assert [(lay.name, lay.kept, lay.total) for lay in report.layers] == [("conv_a", 2, 4)]
    (name, why), = report.skipped
    assert name == "conv_b" and "Add" in why and "another branch" in why
    assert pruned.values["a"].shape == ("N", 2, 5, 5)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 5)).astype(np.float32)
    ref = graph.copy()
    drop = np.setdiff1d(np.arange(4), report.layers[0].channels)
    ref.initializers["wa"] = ref.initializers["wa"].copy()
    ref.initializers["wa"][drop] = 0
    got = Model(pruned, device="reference").run(None, {"x": x})[0]
    want = Model(ref, device="reference").run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_graph_output_is_skipped_and_keeps_at_least_one():
    _, report = prune(_mlp(), 0.99)
    assert all(lay.kept == 1 for lay in report.layers)
    assert report.skipped == [("4_Gemm", "'output' is a graph output")]


def test_sparsity_zero_is_identity():
    graph = _cnn()
    pruned, report = prune(graph, 0.0)
    assert report.params_after == report.params_before
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(pruned, x), _run(graph, x))


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, float("nan"), "half"])
def test_bad_sparsity_names_the_value(bad):
    with pytest.raises(InputError, match=repr(bad).replace("(", r"\(")):
        prune(_mlp(), bad)
    assert issubclass(InputError, TaskflowError)


def test_unstructured_exact_sparsity_and_same_output_as_zeroed():
    graph = _cnn()
    pruned, report = prune(graph, 0.9, structured=False)
    assert "sparse (CSR) kernel" in str(report) and report.kernels == []  # Model.prune's part
    ref = graph.copy()
    for name in ("0.weight", "3.weight", "7.weight"):
        w = graph.initializers[name]
        new = next(v for k, v in pruned.initializers.items() if k.startswith(f"{name}_pruned"))
        assert np.count_nonzero(new == 0) == round(0.9 * w.size)
        kept = new != 0
        assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()  # the smallest ones went
        ref.initializers[name] = np.where(kept, w, 0).astype(w.dtype)
    assert pruned.parameter_count() == graph.parameter_count()
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(pruned, x), _run(ref, x))


def test_digits_cnn_agreement():
    from taskflow.demo import PIXEL_MAX, load_digits, load_digits_model

    images, _, test_idx = load_digits()
    x = (images[test_idx] / PIXEL_MAX).astype(np.float32)
    model = load_digits_model()
    pruned = model.prune(0.25)
    name = model.get_inputs()[0].name
    agree = float(np.mean(model.run(None, {name: x})[0].argmax(1)
                          == pruned.run(None, {name: x})[0].argmax(1)))
    report = pruned.prune_report
    print(f"digits CNN, 25% structured: top-1 agreement {agree:.4f}, parameters "
          f"{report.params_before} -> {report.params_after}")
    assert [lay.kept for lay in report.layers] == [12, 24, 48]
    assert agree > 0.5


def test_cli_prune(tmp_path, capsys):
    from taskflow.cli import main

    src, out = tmp_path / "mlp.onnx", tmp_path / "pruned.onnx"
    Model(_mlp()).save(src)
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "parameters 371 -> " in printed and "kept 8/16" in printed
    from taskflow.model import load

    assert load(out).graph.parameter_count() < 371
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.5" in err
    assert main(["prune", str(src), "-o", str(out), "--sparsity", "0.9", "--unstructured"]) == 0
    printed = capsys.readouterr().out
    assert "kernels (executed graph):" in printed and "sparsity 0.90, dense " in printed
    assert all(n.domain == "" for n in load(out).source_graph.nodes)  # standard ONNX saved


def test_bench_quick(capsys):
    from benchmarks.bench_prune import main

    main(["--quick"])
    assert "ratio" in capsys.readouterr().out
    main(["--unstructured", "--quick"])
    assert "ratio dense/sparse" in capsys.readouterr().out


def test_matmul_with_bias_add_and_flatten_of_spatial_dims():
    """MatMul + Add(bias) chains slice the bias on the last axis; a Flatten of 2x2 pixels per
    channel removes four consumer columns per channel."""
    rng = np.random.default_rng(3)
    mm = Graph(
        nodes=[Node("MatMul", ["input", "w1"], ["h"], name="mm1"), Node("Add", ["b1", "h"], ["a"]),
               Node("Relu", ["a"], ["r"]), Node("MatMul", ["r", "w2"], ["y"], name="mm2")],
        inputs=[Value("input", np.float32, ("N", 6))], outputs=[Value("y", np.float32, ("N", 3))],
        initializers={"w1": rng.standard_normal((6, 8)).astype(np.float32),
                      "b1": rng.standard_normal(8).astype(np.float32),
                      "w2": rng.standard_normal((8, 3)).astype(np.float32)}, name="mm")
    pruned, report = prune(mm, 0.5)
    assert [(lay.name, lay.kept) for lay in report.layers] == [("mm1", 4)]
    drop = np.setdiff1d(np.arange(8), report.layers[0].channels)
    ref = mm.copy()
    for name, axis in (("w1", 1), ("b1", 0), ("w2", 0)):
        w = np.moveaxis(ref.initializers[name], axis, 0).copy()
        w[drop] = 0
        ref.initializers[name] = np.moveaxis(w, 0, axis)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(ref, x), rtol=1e-5, atol=1e-5)

    flat = nn.Sequential([nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Dense(24, 3)], input_shape=(2, 4, 4)).to_graph()
    pruned, report = prune(flat, 0.5)
    kept = report.layers[0].channels
    assert pruned.values["3_flatten"].shape == ("N", 12)
    ref = flat.copy()  # no BatchNorm between: a zeroed channel reaches the Dense as zeros
    drop = np.setdiff1d(np.arange(6), kept)
    for name in ("0.weight", "0.bias"):
        ref.initializers[name] = ref.initializers[name].copy()
        ref.initializers[name][drop] = 0
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, x), _run(ref, x), rtol=1e-5, atol=1e-5)


# --- unstructured: sparse kernels chosen by measurement ------------------------------------------


def test_unstructured_model_times_each_layer_and_keeps_the_dense_results():
    """Every eligible layer is timed both ways and listed; ``sparse=1`` sits exactly on the
    layers measured faster; the outputs are the dense pruned model's, with the sparse kernel
    on every layer too; the source graph (what save writes) stays standard ONNX."""
    from taskflow.ir.quantize import layer_name

    net = nn.Sequential([nn.Dense(256, 256), nn.ReLU(), nn.Dense(256, 128), nn.Tanh(),
                         nn.Dense(128, 8)], input_shape=(256,), name="wide")
    x = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    pruned = Model(net.to_graph()).prune(0.9, structured=False, sample=x)
    report = pruned.prune_report
    assert [c.name for c in report.kernels] == ["0_Gemm", "2_Gemm", "4_Gemm"]
    for c in report.kernels:
        assert c.sparsity == pytest.approx(0.9, abs=1e-3) and c.dense_ms > 0 and c.sparse_ms > 0
        assert c.kernel == ("sparse" if c.dense_ms > 1.03 * c.sparse_ms else "dense")
        assert str(c) in str(report)
    chosen = {layer_name(n) for n in pruned.graph.nodes if n.attrs.get("sparse")}
    assert chosen == {c.name for c in report.kernels if c.kernel == "sparse"}
    assert not any(n.attrs.get("sparse") or n.domain for n in pruned.source_graph.nodes)

    dense = Model(pruned.source_graph).run(None, {"input": x})[0]
    np.testing.assert_allclose(pruned.run(None, {"input": x})[0], dense, rtol=1e-4, atol=1e-5)
    everywhere = pruned.graph.copy()
    for n in everywhere.nodes:
        if n.op in ("Gemm", "FusedGemm"):
            n.op, n.domain, n.attrs = "FusedGemm", "taskflow", {"activation": "", **n.attrs,
                                                                 "sparse": 1}
    all_sparse = pruned._derived(everywhere).run(None, {"input": x})[0]
    np.testing.assert_allclose(all_sparse, dense, rtol=1e-4, atol=1e-5)


def test_layers_without_a_sparse_kernel_are_listed_with_the_reason():
    """3x3 convolutions have no sparse kernel, layers below 50% zeros are not timed, and a
    model on the reference kernels measures nothing."""
    from taskflow.precision.sparse import choose_sparse_kernels

    pruned = Model(_cnn()).prune(0.9, structured=False)
    why = {c.name: c.why for c in pruned.prune_report.kernels}
    assert "3x3 convolution" in why["0_Conv"] and "3x3 convolution" in why["3_Conv"]
    assert why["7_Gemm"] == ""
    light, _ = prune(_mlp(), 0.3, structured=False)
    _, choices = choose_sparse_kernels(Model(light))
    assert {c.why for c in choices} == {"sparsity below 0.5"}
    assert all(c.dense_ms is None and c.kernel == "dense" for c in choices)
    _, choices = choose_sparse_kernels(Model(prune(_mlp(), 0.9, structured=False)[0],
                                             device="reference"))
    assert {c.why for c in choices} == {"device 'reference' has no sparse kernel"}
