"""Reduced precision on the bundled digits CNN: bf16 and int8 applied, per-layer measured
choices, static int8 files ONNX Runtime runs, calibration on a real Dask cluster and Zarr
store, ``taskflow quantize``, and the errors users can cause."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import taskflow as tf
from taskflow.cli import main
from taskflow.demo import load_digits, load_digits_model
from taskflow.errors import InputError
from taskflow.ir.calibrate import collect_ranges
from taskflow.ir.quantize import precision_nodes
from taskflow.precision import CompressionReport, LayerChoice, evaluate
from taskflow.precision.calibration import calibration_stats, calibration_target

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def digits():
    """fp32 model, float32 images (grey levels / 16), train and test row indices."""
    images, _, test_idx = load_digits()
    x = (images / 16).astype(np.float32)
    train = np.setdiff1d(np.arange(len(x)), test_idx)
    return load_digits_model(), x, train, test_idx


@pytest.fixture(scope="module")
def client():
    """A real 2-worker LocalCluster (threads: starts in a second, as other tests' do)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def test_bf16_everywhere_agrees_with_fp32_and_really_runs_bf16(digits):
    model, x, _, test = digits
    bf16 = model.with_precision("bf16", choose="all")
    marked = {n.name for n in bf16.graph.nodes if n.attrs.get("precision") == "bf16"}
    assert marked == set(precision_nodes(model.graph)) and len(marked) == 4
    assert bf16.source_graph is model.source_graph  # save() writes fp32
    ref, got = model.run(None, {"input": x[test]})[0], bf16.run(None, {"input": x[test]})[0]
    assert top1(ref, got) >= 0.99
    assert not np.array_equal(ref, got)  # the precision applied
    np.testing.assert_allclose(got, ref, atol=0.05)
    report = evaluate(model, bf16, x[test])
    assert report.rows == len(test) and report.top1_agreement >= 0.99
    assert report.cosine_min > 0.99 and report.fp32_ms > 0 and report.reduced_ms > 0
    assert "top-1 agreement" in str(report) and "bf16" in str(report)


def test_measured_choice_records_every_candidate_with_both_timings(digits):
    model, x, train, _ = digits
    for precision in ("bf16", "int8"):
        chosen = model.with_precision(precision, sample=x[train[:8]])
        layers = chosen.precision_report.layers
        assert [c.name for c in layers] == precision_nodes(model.graph)
        for c in layers:
            assert isinstance(c, LayerChoice) and c.candidate == precision
            assert c.fp32_ms > 0 and c.reduced_ms > 0 and c.precision in (precision, "fp32")
            node = next(n for n in chosen.graph.nodes if n.name == c.name)
            assert node.attrs.get("precision", "") == ("" if c.precision == "fp32" else precision)
        print(chosen.precision_report)  # the measured choices, for the log


def test_quantize_times_the_layers_on_the_sample_given(digits):
    model, x, train, _ = digits
    dynamic = model.quantize(mode="dynamic", sample=x[train[:3]])
    static = model.quantize(x[train[:16]], sample=x[train[:5]])
    default = model.quantize(x[train[:16]])  # the first 8 calibration rows
    for int8, rows in ((dynamic, 3), (static, 5), (default, 8)):
        layers = int8.precision_report.layers
        assert len(layers) == 4 and all(c.fp32_ms and c.reduced_ms for c in layers)
        assert {c.shapes[0][0] for c in layers} == {rows}  # the input's batch


def test_fp32_precision_drops_every_reduced_layer(digits):
    model, *_ = digits
    back = model.with_precision("bf16", choose="all").with_precision("fp32")
    assert not any(n.attrs.get("precision") for n in back.graph.nodes)


def test_static_int8_agrees_shrinks_the_file_and_runs_in_onnxruntime(digits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x, train, test = digits
    int8 = model.quantize(x[train[:300]], choose="all")
    report = int8.precision_report
    assert report.precision == "int8" and report.mode == "static"
    assert all(c.precision == "int8" for c in report.layers) and len(report.layers) == 4
    ref, got = model.run(None, {"input": x[test]})[0], int8.run(None, {"input": x[test]})[0]
    assert top1(ref, got) >= 0.98 and not np.array_equal(ref, got)
    model.save(tmp_path / "fp32.onnx")
    int8.save(tmp_path / "int8.onnx")
    assert report.size_ratio >= 3.5  # the weights as saved
    # the whole file: digits' 14 kB of int8 weights sit beside ~4 kB of graph (names, QDQ
    # nodes), so its file shrinks 3x; a conv net of real size: see the next test
    assert os.path.getsize(tmp_path / "fp32.onnx") >= 2.9 * os.path.getsize(tmp_path / "int8.onnx")
    # ONNX Runtime without graph optimisation computes the QDQ graph as ONNX defines it:
    # fake-quantised fp32, which is what taskflow's int8 kernels compute too
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), plain,
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"input": x[test]})[0], atol=1e-4)
    # its optimised int8 kernels differ (u8 x s8 products saturate in int16 on AVX2 without
    # VNNI, ONNX Runtime's known limit) but still agree with fp32
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    assert top1(ref, session.run(None, {"input": x[test]})[0]) >= 0.97
    reloaded = tf.load(tmp_path / "int8.onnx")  # the QDQ file runs int8 kernels again
    assert sum(n.attrs.get("precision") == "int8" for n in reloaded.graph.nodes) == 4
    np.testing.assert_allclose(reloaded.run(None, {"input": x[test]})[0], got, atol=1e-5)
    measured = tf.load(tmp_path / "int8.onnx", precision="int8")  # int8 where faster here
    kept = {c.name: c.precision for c in measured.precision_report.layers}
    assert measured.precision_report.mode == "static" and len(kept) == 4
    for node in measured.graph.nodes:
        if node.name in kept:
            assert node.attrs.get("precision", "fp32") == kept[node.name]
            assert (node.attrs.get("x_scale", 0) > 0) == (kept[node.name] == "int8")


def test_reduce_range_keeps_weights_seven_bit_from_file_to_kernel(digits, tmp_path):
    """reduce_range=True: weights in [-63, 63] (what CPUs without VNNI sum exactly), in the
    saved QDQ file and as the kernels quantise the folded weights again; accuracy holds, and
    ONNX Runtime computes the file as taskflow does."""
    ort = pytest.importorskip("onnxruntime")
    from taskflow.ops.quant import quantize_weight_per_channel

    model, x, train, test = digits
    seven = model.quantize(x[train[:300]], choose="all", reduce_range=True)
    eight = model.quantize(x[train[:300]], choose="all", reduce_range=False)
    assert any("7-bit" in n for n in seven.precision_report.notes)
    assert not any("7-bit" in n for n in eight.precision_report.notes)

    def stored(m) -> int:  # the largest int8 weight of the QDQ graph
        return max(int(np.abs(v.astype(np.int16)).max())
                   for v in m.source_graph.initializers.values() if v.dtype == np.int8)

    assert (stored(seven), stored(eight)) == (63, 127)
    folded = [seven.graph.initializers[n.inputs[1]] for n in seven.graph.nodes
              if n.attrs.get("precision") == "int8"]
    assert len(folded) == 4  # each output channel: 63 levels exactly, as the kernels see it
    assert all(np.abs(quantize_weight_per_channel(w, 0)[0]).max() == 63 for w in folded)
    ref = model.run(None, {"input": x[test]})[0]
    got = seven.run(None, {"input": x[test]})[0]
    assert top1(ref, got) >= 0.98
    assert not np.array_equal(got, eight.run(None, {"input": x[test]})[0])
    seven.save(tmp_path / "int8-7bit.onnx")
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "int8-7bit.onnx"), plain,
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"input": x[test]})[0], atol=1e-4)
    reloaded = tf.load(tmp_path / "int8-7bit.onnx")
    np.testing.assert_allclose(reloaded.run(None, {"input": x[test]})[0], got, atol=1e-5)
    with pytest.raises(InputError, match="reduce_range='yes'"):
        model.quantize(x[train[:300]], reduce_range="yes")


def test_int8_file_of_a_conv_net_is_at_least_3_5x_smaller(tmp_path):
    from taskflow.frontend import nn

    net = nn.Sequential([nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(),
                         nn.Flatten(), nn.Dense(128, 10)], input_shape=(3, 16, 16))
    model = net.to_model()
    x = np.random.default_rng(0).standard_normal((16, 3, 16, 16), dtype=np.float32)
    int8 = model.quantize(x, choose="all")
    model.save(tmp_path / "fp32.onnx")
    int8.save(tmp_path / "int8.onnx")
    assert os.path.getsize(tmp_path / "fp32.onnx") >= 3.5 * os.path.getsize(tmp_path / "int8.onnx")


def test_dynamic_int8_needs_no_calibration(digits, tmp_path):
    model, x, _, test = digits
    int8 = model.quantize(mode="dynamic", choose="all")
    assert all(c.precision == "int8" for c in int8.precision_report.layers)
    got = int8.run(None, {"input": x[test]})[0]
    assert top1(model.run(None, {"input": x[test]})[0], got) >= 0.98
    assert int8.precision_report.size_ratio >= 3.5


def test_calibration_on_a_cluster_equals_calibration_in_process(digits, tmp_path, client):
    import dask.array as da

    from taskflow.dask.calibrate import calibration_arrays, cluster_stats

    model, x, train, _ = digits
    data = x[train[:200]]
    store = str(tmp_path / "calib.zarr")
    zarr.create_array(store, shape=data.shape, chunks=(64, 1, 8, 8), dtype="float32")[:] = data
    target = calibration_target(model)
    arrays = calibration_arrays(model, store)
    assert isinstance(arrays["input"], da.Array)
    local = calibration_stats(target, {"input": data}, batch_size=48)
    local_hist = calibration_stats(target, {"input": data}, batch_size=48, ranges=local)
    remote = cluster_stats(client, target, arrays, batch_size=32)
    remote_hist = cluster_stats(client, target, arrays, batch_size=32, ranges=remote)
    assert remote == local and set(local) == {"input", "3_maxpool", "8_flatten", "11_dropout"}
    assert remote_hist == local_hist
    assert local["input"] == collect_ranges({"input": data})["input"]


def test_cli_quantize_end_to_end_on_a_zarr_store(digits, tmp_path, capsys, client):
    model, x, train, test = digits
    model.save(tmp_path / "digits.onnx")
    store = str(tmp_path / "digits.zarr")
    rows = np.concatenate([train[:240], test[:60]])  # the last 20% (test rows) are held out
    zarr.create_array(store, shape=(300, 1, 8, 8), chunks=(100, 1, 8, 8),
                      dtype="float32")[:] = x[rows]
    out = tmp_path / "digits-int8.onnx"
    code = main(["quantize", str(tmp_path / "digits.onnx"), "--calibration", store,
                 "-o", str(out), "--batch-size", "64", "--scheduler", client.scheduler.address,
                 "--reduce-range", "on"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for word in ("precision  int8", "size", "top-1 agreement", "over 60 held-out rows",
                 "speed", "0_Conv", f"saved {out}", "7-bit weights"):
        assert word in printed
    stored = [v for v in onnx.load(out).graph.initializer if v.data_type == onnx.TensorProto.INT8]
    assert max(np.abs(onnx.numpy_helper.to_array(v).astype(np.int16)).max() for v in stored) == 63
    reloaded = tf.load(out)
    got = reloaded.run(None, {"input": x[test]})[0]
    assert top1(model.run(None, {"input": x[test]})[0], got) >= 0.98


def _cli_error(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_input_is_one_line_and_exit_2(digits, tmp_path, capsys):
    model, x, *_ = digits
    path = str(tmp_path / "digits.onnx")
    model.save(path)
    err = _cli_error(capsys, "quantize", path, "--calibration", str(tmp_path / "none.zarr"),
                     "-o", str(tmp_path / "q.onnx"))
    assert "none.zarr" in err and "does not exist" in err
    store = str(tmp_path / "c.zarr")
    zarr.create_array(store, shape=(10, 1, 8, 8), chunks=(5, 1, 8, 8), dtype="float32")
    err = _cli_error(capsys, "quantize", path, "--calibration", store, "--input-name", "images",
                     "-o", str(tmp_path / "q.onnx"))
    assert "'images'" in err and "'input'" in err
    err = _cli_error(capsys, "quantize", path, "-o", str(tmp_path / "q.onnx"))
    assert "--calibration" in err
    assert not (tmp_path / "q.onnx").exists()
    err = _cli_error(capsys, "run", path, "-i", store, "-o", str(tmp_path / "o.zarr"),
                     "--precision", "fp16")
    assert "'fp16'" in err and "bf16" in err
    with pytest.raises(InputError, match="'fp16'"):
        model.with_precision("fp16")
    with pytest.raises(InputError, match="'fp8'"):
        tf.load(path, precision="fp8")
    with pytest.raises(InputError, match="calibration"):
        model.quantize()
    with pytest.raises(InputError, match="'images'"):
        model.quantize(x[:8], input_name="images")
    with pytest.raises(InputError, match="'nearest'"):
        model.quantize(x[:8], method="nearest")


def test_report_prints_a_compact_table():
    report = CompressionReport(
        "int8", mode="static", method="entropy", bytes_before=56_000, bytes_after=15_000,
        backend="mkl-avx2", layers=[LayerChoice("conv", "FusedConv", ((8, 1, 8, 8),
                                                                     (16, 1, 3, 3)),
                                                "int8", "fp32", 0.02, 0.04)])
    text = str(report)
    assert "56.0 kB -> 15.0 kB (3.73x smaller)" in text
    assert "8x1x8x8 * 16x1x3x3" in text and "0.50x" in text and "not evaluated" in text


def _reduced(layers: list, precision: str, seed: int) -> tuple[tf.Model, np.ndarray]:
    """An ``nn.Sequential`` of ``layers`` on 3x20x20 inputs with every layer in
    ``precision`` (int8: calibrated on the batch), and that batch of 6."""
    from taskflow.frontend import nn

    model = nn.Sequential(layers, input_shape=(3, 20, 20)).to_model()
    x = np.random.default_rng(seed).standard_normal((6, 3, 20, 20), dtype=np.float32)
    reduced = model.quantize(x, choose="all") if precision == "int8" else \
        model.with_precision("bf16", choose="all")
    return reduced, x


def _without_handoffs(model: tf.Model, x: np.ndarray) -> np.ndarray:
    """``model``'s output on ``x`` with float32 between every pair of layers."""
    plan = model._plan
    handoffs, plan.handoffs = plan.handoffs, {}
    try:
        return model.run(None, {"input": x})[0]
    finally:
        plan.handoffs = handoffs


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_layers_hand_each_other_narrow_activations(precision):
    """Consecutive reduced convolutions pass bf16 bits / uint8 between them instead of
    float32 (ExecutionPlan.handoffs), with results identical to float32 hand-offs: what
    feeds another op (here a pooling layer) stays float32, and traced runs see float32."""
    from taskflow.frontend import nn

    reduced, x = _reduced([nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                           nn.Conv2d(16, 32, 1), nn.ReLU(),
                           nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                           nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dense(32, 10)], precision, 3)
    plan = reduced._plan
    convs = [k for k, s in enumerate(plan.steps) if s.node.op == "FusedConv"]
    assert len(convs) == 3 and sorted(plan.handoffs) == convs[:2]  # the last feeds the pool
    for k in convs[:2]:
        attrs = plan.handoffs[k]
        assert attrs["y_precision"] == precision
        if precision == "int8":  # the next layer's own input quantisation
            nxt = plan.steps[k + 1].node.attrs
            assert (attrs["y_scale"], attrs["y_zero_point"]) == (
                nxt["x_scale"], nxt["x_zero_point"]) and attrs["y_scale"] > 0
    narrow = reduced.run(None, {"input": x})[0]
    np.testing.assert_array_equal(narrow, _without_handoffs(reduced, x))
    assert np.ptp(narrow, axis=0).min() > 0  # the logits depend on the input
    if precision == "bf16":
        trace: list = []
        plan.run({"input": x}, trace=lambda node, args, results: trace.append(results[0]))
        assert all(r.dtype == np.float32 for r in trace)  # a traced run sees float32


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_max_pool_passes_narrow_activations_through(precision):
    """A MaxPool between reduced convolutions (ResNet's stem -> pool -> first block) takes
    and gives narrow values, with results identical to float32 hand-offs. The convolution
    before it has no activation: negative bf16 values must order right too."""
    from taskflow.frontend import nn

    reduced, x = _reduced([nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(3, 2, 1),
                           nn.Conv2d(16, 32, 1), nn.ReLU(),
                           nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dense(32, 10)], precision, 5)
    plan = reduced._plan
    ops = [s.node.op for s in plan.steps]
    first, pool = ops.index("FusedConv"), ops.index("MaxPool")
    assert sorted(plan.handoffs) == [first, pool]
    after = plan.steps[ops.index("FusedConv", pool)].node.attrs
    for k in (first, pool):
        assert plan.handoffs[k]["y_precision"] == precision
        if precision == "int8":  # the scale of the layer after the pool
            assert (plan.handoffs[k]["y_scale"], plan.handoffs[k]["y_zero_point"]) == (
                after["x_scale"], after["x_zero_point"])
    fn, seen = plan.steps[pool].fn, []

    def spy(X, **attrs):
        seen.append(X.dtype)
        return fn(X, **attrs)

    plan.steps[pool].fn = spy
    narrow = reduced.run(None, {"input": x})[0]
    plan.steps[pool].fn = fn
    assert seen == [np.uint8 if precision == "int8" else np.uint16]
    np.testing.assert_array_equal(narrow, _without_handoffs(reduced, x))
    assert np.ptp(narrow, axis=0).min() > 0  # the logits depend on the input


def test_a_marginal_layer_keeps_int8_where_it_links_narrow_hand_offs(monkeypatch):
    """Where the reduced kernel is faster by less than MIN_SPEEDUP, a layer that hands or
    takes narrow activations stays reduced (in fp32 it would cost its neighbours their
    hand-offs), an unlinked one goes fp32; and any layer measured slower goes fp32. The
    timings are fixed here (the race is the machine's; the rule is what is tested)."""
    from taskflow.frontend import nn
    from taskflow.precision import measure

    net = nn.Sequential([nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                         nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dense(8, 4)],
                        input_shape=(3, 10, 10))
    x = np.random.default_rng(7).standard_normal((4, 3, 10, 10), dtype=np.float32)
    for fp32_s, kept in ((1.02e-3, ["int8", "int8", "fp32"]), (0.99e-3, ["fp32"] * 3)):
        monkeypatch.setattr(measure, "_race", lambda *a, t=fp32_s: (t, 1.0e-3))
        layers = net.to_model().quantize(x, choose="measure").precision_report.layers
        assert [c.op for c in layers] == ["FusedConv", "FusedConv", "FusedGemm"]
        assert [c.precision for c in layers] == kept


def _programs(obj, depth: int = 0) -> list:
    """The per-task programs (taskflow.dask.units.Program) in a Dask graph's values."""
    from taskflow.dask.units import Program

    if isinstance(obj, Program):
        return [obj]
    if depth > 6 or isinstance(obj, (str, bytes, type, np.ndarray)):
        return []
    if isinstance(obj, (tuple, list)):
        return [p for o in obj for p in _programs(o, depth + 1)]
    if isinstance(obj, dict):
        return [p for o in obj.values() for p in _programs(o, depth + 1)]
    return [p for a in ("func", "args", "kwargs", "value") if hasattr(obj, a)
            for p in _programs(getattr(obj, a), depth + 1)]


def test_predict_hands_narrow_activations_on_within_a_task(client):
    """On the cluster, each task's program hands its reduced layers' activations on narrow
    (never across tasks), with Model.run's numbers exactly."""
    import dask.array as da

    from taskflow.frontend import nn

    net = nn.Sequential([nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1),
                         nn.ReLU(), nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                         nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dense(32, 10)],
                        input_shape=(3, 20, 20))
    x = np.random.default_rng(4).standard_normal((6, 3, 20, 20), dtype=np.float32)
    int8 = net.to_model().quantize(x, choose="all")
    y = int8.predict(da.from_array(x, chunks=(3, -1, -1, -1)), client=client)
    programs = _programs(list(dict(y.__dask_graph__()).values()))
    assert programs
    for p in programs:
        convs = [attrs for _, op, _, _, attrs in p.nodes if op == "FusedConv"]
        assert [a.get("y_precision", "") for a in convs] == ["int8", "int8", ""]
        assert not set(p.outputs) & {outs[0] for _, _, _, outs, a in p.nodes
                                     if a.get("y_precision")}
    got = y.compute()
    np.testing.assert_array_equal(got, int8.run(None, {"input": x})[0])
    assert np.ptp(got, axis=0).min() > 0
