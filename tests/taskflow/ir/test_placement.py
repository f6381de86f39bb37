"""Output placement: convolutions write into the Concat they feed, which then copies nothing.

The plan (taskflow.ir.placement), the kernels' side (an offered buffer, the zero-copy Concat) on
every convolution path, and both interpreters: ``Model.run`` and the Dask task interpreter.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import taskflow.ops as ops
from distributed import Client, LocalCluster
from taskflow.ops.cpu import direct
from taskflow.ops.cpu.common import ConcatBuffer, adjacent_channels, output_slot
from taskflow.ops.cpu.warmup import channels_last

import taskflow as tf
from taskflow.bench.harness import resolve_model
from taskflow.ir.placement import MIN_SLOT_CHANNELS, Slot, concat_slots

C = MIN_SLOT_CHANNELS


def _nodes(*specs):
    """(op, inputs, outputs, attrs) tuples from compact ("op", "in,in", "out") triples."""
    return [(op, ins.split(","), [out], {"axis": 1} if op == "Concat" else {})
            for op, ins, out in specs]


def test_every_input_of_a_concat_from_a_private_convolution_gets_a_slot():
    nodes = _nodes(("Conv", "x", "a"), ("FusedConv", "x", "b"), ("Concat", "a,b", "y"))
    slots = concat_slots(nodes, {"a": C, "b": 2 * C}.get, keep=["y"])
    assert slots == {0: Slot(2, 0, 3 * C), 1: Slot(2, C, 3 * C)}


@pytest.mark.parametrize("why, nodes, channels, keep", [
    ("an input read twice", _nodes(("Conv", "x", "a"), ("Conv", "x", "b"),
                                   ("Concat", "a,b", "y"), ("Relu", "a", "z")), None, ()),
    ("an input that is an output", _nodes(("Conv", "x", "a"), ("Conv", "x", "b"),
                                          ("Concat", "a,b", "y")), None, ("a",)),
    ("an input from another op", _nodes(("Conv", "x", "a"), ("Relu", "x", "b"),
                                        ("Concat", "a,b", "y")), None, ()),
    ("a narrow input", _nodes(("Conv", "x", "a"), ("Conv", "x", "b"), ("Concat", "a,b", "y")),
     {"a": C, "b": C // 2}, ()),
    ("an unknown channel count", _nodes(("Conv", "x", "a"), ("Conv", "x", "b"),
                                        ("Concat", "a,b", "y")), {"a": C}, ()),
])
def test_a_concat_is_placed_all_or_nothing(why, nodes, channels, keep):
    channels = channels or {"a": C, "b": C}
    assert concat_slots(nodes, channels.get, keep) == {}, why


def test_pools_write_their_slot_at_any_width_convolutions_from_64_channels():
    nodes = _nodes(("Conv", "x", "a"), ("AveragePool", "x", "b"), ("Concat", "a,b", "y"))
    assert concat_slots(nodes, {"a": C, "b": 3}.get) == {0: Slot(2, 0, C + 3),
                                                        1: Slot(2, C, C + 3)}
    assert concat_slots(nodes, {"a": C - 1, "b": 3}.get) == {}


def test_adjacent_channels_accepts_only_exact_neighbours_in_one_buffer():
    buf = np.zeros((2, 3, 4, 10), np.float32)
    views = [buf[..., 0:4].transpose(0, 3, 1, 2), buf[..., 4:10].transpose(0, 3, 1, 2)]
    joined = adjacent_channels(views)
    assert joined is not None and np.shares_memory(joined, buf)
    np.testing.assert_array_equal(joined, buf.transpose(0, 3, 1, 2))
    assert adjacent_channels(views[::-1]) is None  # wrong order
    assert adjacent_channels([views[0], buf[..., 5:10].transpose(0, 3, 1, 2)]) is None  # gap
    other = np.zeros_like(buf)
    assert adjacent_channels([views[0], other[..., 4:10].transpose(0, 3, 1, 2)]) is None
    assert adjacent_channels([views[0]]) is None  # 4 of 10 channels: not a whole buffer


@pytest.fixture
def direct_routing():
    """The 8-lane direct 1x1 kernel too where MKL runs AVX-512 (which routes it to the GEMM)."""
    with direct.routed_as(False):
        yield


#: (weight shape, attributes, input channels): every convolution path of the cpu kernel.
PATHS = {
    "1x1": ((64, 16, 1, 1), {}, 16),
    "im2col": ((64, 8, 3, 3), {"pads": [1, 1, 1, 1]}, 8),
    "winograd": ((64, 48, 3, 3), {"pads": [1, 1, 1, 1]}, 48),
    "depthwise": ((64, 1, 3, 3), {"group": 64, "pads": [1, 1, 1, 1]}, 64),
    "grouped": ((64, 8, 1, 1), {"group": 2}, 16),
    # reduced precision: MKL's bf16 / int8 GEMMs write the slot's columns from Numba
    "im2col-bf16": ((64, 8, 3, 3), {"pads": [1, 1, 1, 1], "precision": "bf16"}, 8),
    "1x1-int8": ((64, 16, 1, 1), {"precision": "int8", "x_scale": 0.03, "x_zero_point": 200}, 16),
    "im2col-int8": ((64, 8, 3, 3), {"pads": [1, 1, 1, 1], "precision": "int8", "x_scale": 0.03,
                                    "x_zero_point": 200}, 8),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.usefixtures("direct_routing")
def test_each_convolution_path_writes_its_slot_and_concat_copies_nothing(path):
    shape, attrs, c = PATHS[path]
    rng = np.random.default_rng(1)
    x = channels_last(rng.standard_normal((3, c, 7, 7), dtype=np.float32))
    w = rng.standard_normal(shape, dtype=np.float32)
    b = rng.standard_normal(shape[0], dtype=np.float32)
    z = channels_last(rng.standard_normal((3, shape[0], 7, 7), dtype=np.float32))
    fused = {**attrs, "activation": "Relu"}
    kernel = ops.get("FusedConv").kernels["cpu"]
    w1 = rng.standard_normal((32, c, 1, 1), dtype=np.float32)
    buffer = ConcatBuffer(32 + 2 * shape[0])
    outs = []
    for offset, call in ((0, lambda: ops.get("Conv").kernels["cpu"](x, w1)),
                         (32, lambda: kernel(x, w, b, z, **fused)),
                         (32 + shape[0], lambda: kernel(x, w, b, **fused))):
        with output_slot(buffer, offset):
            outs.append(call())
    assert buffer.array is not None and all(np.shares_memory(o, buffer.array) for o in outs)
    joined = ops.get("Concat").kernels["cpu"](*outs, axis=1)
    assert np.shares_memory(joined, buffer.array)
    want = np.concatenate([ops.get("Conv").reference(x, w1),
                           ops.get("FusedConv").reference(x, w, b, z, **fused),
                           ops.get("FusedConv").reference(x, w, b, **fused)], axis=1)
    np.testing.assert_allclose(joined, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op, attrs", [
    ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
])
def test_pools_write_their_slot(op, attrs):
    rng = np.random.default_rng(5)
    x = channels_last(rng.standard_normal((2, 24, 9, 9), dtype=np.float32))
    w = rng.standard_normal((64, 24, 1, 1), dtype=np.float32)
    pooled = ops.get(op).reference(x, **attrs)
    buffer = ConcatBuffer(64 + 24)
    with output_slot(buffer, 0):
        a = ops.get("Conv").kernels["cpu"](pooled, w)
    with output_slot(buffer, 64):
        b = ops.get(op).kernels["cpu"](x, **attrs)
    joined = ops.get("Concat").kernels["cpu"](a, b, axis=1)
    assert np.shares_memory(joined, buffer.array)
    np.testing.assert_array_equal(joined[:, 64:], pooled)


def test_an_offer_that_does_not_fit_is_declined():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 5, 5), dtype=np.float32)
    w = rng.standard_normal((64, 8, 1, 1), dtype=np.float32)
    buffer = ConcatBuffer(128)
    buffer.array = np.zeros((2, 6, 6, 128), np.float32)  # another spatial size
    with output_slot(buffer, 0):
        y = ops.get("Conv").kernels["cpu"](x, w)
    assert not np.shares_memory(y, buffer.array) and not buffer.array.any()
    np.testing.assert_allclose(y, ops.get("Conv").reference(x, w), rtol=1e-4, atol=1e-4)


def test_shufflenets_pool_and_convolution_concats_are_placed():
    model = tf.load(resolve_model("shufflenet"))
    writers = {model._plan.steps[k].node.op for k in model._plan.slots}
    assert writers == {"AveragePool", "Conv"} and len(model._plan.slots) == 6
    x = np.random.default_rng(6).standard_normal((2, 3, 224, 224), dtype=np.float32)
    name = model.get_inputs()[0].name
    placed = model.run(None, {name: x})[0]
    model._plan.slots = {}
    np.testing.assert_array_equal(placed, model.run(None, {name: x})[0])


@pytest.fixture(scope="module")
def squeezenet():
    return tf.load(resolve_model("squeezenet"))


def test_model_run_places_squeezenets_fire_concats_and_keeps_every_number(squeezenet):
    plan = squeezenet._plan
    concats = [k for k, s in enumerate(plan.steps) if s.node.op == "Concat"]
    assert len(concats) == 8 and {s.concat for s in plan.slots.values()} == set(concats)
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224), dtype=np.float32)
    name = squeezenet.get_inputs()[0].name
    copied = []

    def trace(node, args, results):
        if node.op == "Concat":
            copied.append(not np.shares_memory(results[0], args[0]))

    placed = plan.run({name: x}, trace=trace)
    assert copied == [False] * 8
    slots, plan.slots = plan.slots, {}
    try:
        unplaced = plan.run({name: x})
    finally:
        plan.slots = slots
    for k in placed:
        np.testing.assert_array_equal(placed[k], unplaced[k])


def test_dask_tasks_place_concats_too(squeezenet):
    from taskflow.dask.units import Program

    x = np.random.default_rng(4).standard_normal((4, 3, 224, 224), dtype=np.float32)
    lazy = squeezenet.predict(da.from_array(x, chunks=(2, 3, 224, 224)))
    programs = {id(a): a for task in dict(lazy.__dask_graph__()).values()
                for a in getattr(getattr(task, "func", None), "args", ())
                if isinstance(a, Program)}
    assert [len(p.slots) for p in programs.values()] == [16]  # one fused program per chunk
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster):
        got = lazy.compute()
    want = squeezenet.run(None, {squeezenet.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(got, want)
