"""``Model.predict``: lazy Dask arrays, one task per chunk, weights as single keys."""

from __future__ import annotations

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest

import taskflow as tf
from taskflow.dask import lower
from taskflow.dask.units import INLINE_CONST_BYTES
from taskflow.errors import DTypeError, InputError, ShapeError
from tests.taskflow.frontend.onnx_helpers import LIGHT_DIR

from . import lower_models as lm

pytestmark = pytest.mark.timeout(300)


def as_dask(feed: dict[str, np.ndarray], rows: int) -> dict[str, da.Array]:
    return {k: da.from_array(v, chunks=(rows, *v.shape[1:])) for k, v in feed.items()}


def optimized_keys(*arrays: da.Array) -> list:
    optimized = dask.optimize(*arrays)
    graph = {}
    for a in optimized:
        graph.update(dict(a.__dask_graph__()))
    return list(graph)


def name_of(key) -> str:
    return key[0] if isinstance(key, tuple) else key


def n_weights(model: tf.Model) -> int:
    return sum(1 for w in model.graph.initializers.values()
               if np.asarray(w).nbytes > INLINE_CONST_BYTES)


def check_same(model: tf.Model, feed: dict[str, np.ndarray], rows: int, **kw) -> None:
    want = model.run(None, feed)
    got = model.predict(as_dask(feed, rows), **kw)
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(dask.compute(*got), want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# --- numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [lm.cnn, lm.branchy, lm.torch_flatten, lm.mlp])
@pytest.mark.parametrize("batch,rows", [(8, 2), (7, 2), (1, 1), (5, 8)])
def test_matches_model_run(build, batch, rows):
    """Even chunks, a ragged last chunk, a batch of one, one chunk bigger than the batch."""
    model = build()
    check_same(model, lm.sample(model, batch), rows)


def test_is_lazy_and_shaped():
    model = lm.cnn()
    y = model.predict(da.ones((7, 3, 8, 8), dtype=np.float32, chunks=(2, 3, 8, 8)))
    assert isinstance(y, da.Array)
    assert y.shape == (7, 10) and y.dtype == np.float32
    assert y.chunks == ((2, 2, 2, 1), (10,))


def test_numpy_input_and_chunk_size():
    model = lm.cnn()
    feed = lm.sample(model, 6)
    y = model.predict(feed["x"], chunk_size=4)
    assert y.chunks[0] == (4, 2)
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_several_inputs_and_outputs():
    model = lm.two_in_two_out()
    feed = lm.sample(model, 5)
    check_same(model, feed, 2)
    y2 = model.predict(as_dask(feed, 2), outputs=["y2"])
    np.testing.assert_allclose(y2.compute(), model.run(["y2"], feed)[0], rtol=1e-6)


def test_input_without_batch_dim_is_broadcast_to_every_chunk():
    model = lm.with_fixed_input()
    feed = lm.sample(model, 7)
    y = model.predict({"x": da.from_array(feed["x"], chunks=(2, 5)), "scale": feed["scale"]})
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-6)


def test_model_mode_without_client_warns_and_stays_correct():
    model = lm.cnn()
    feed = lm.sample(model, 4)
    with pytest.warns(UserWarning, match="without a distributed client"):
        y = model.predict(as_dask(feed, 2), mode="model", split=("fc",), client=None)
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_light_squeezenet():
    path = LIGHT_DIR / "light_squeezenet.onnx"
    model = tf.load(path)
    name = model.get_inputs()[0].name
    x = np.random.default_rng(0).random((5, 3, 224, 224), dtype=np.float32)
    y = model.predict(da.from_array(x, chunks=(2, 3, 224, 224)))
    keys = optimized_keys(y)
    assert sum(name_of(k).startswith("tf-weight-") for k in keys) > 0
    assert len({k for k in keys if name_of(k).startswith("tf-")
                and not name_of(k).startswith("tf-weight-")}) == 3  # 3 chunks, 3 tasks
    np.testing.assert_allclose(y.compute(), model.run(None, {name: x})[0], rtol=1e-5,
                               atol=1e-6)


# --- graph structure -----------------------------------------------------------------------------
@pytest.mark.parametrize("build", [lm.cnn, lm.branchy, lm.torch_flatten])
def test_one_task_per_chunk(build):
    """4 chunks -> 4 input keys + 4 compute tasks + one key per weight, fan-out or not."""
    model = build()
    feed = lm.sample(model, 8)
    y = model.predict(as_dask(feed, 2))
    keys = optimized_keys(y)
    names = [name_of(k) for k in keys]
    weights = [n for n in names if n.startswith("tf-weight-")]
    compute = [n for n in names if n.startswith("tf-") and n not in weights]
    assert len(compute) == 4, names
    assert len(weights) == len(set(weights)) == n_weights(model)
    assert len(keys) == 4 + 4 + len(weights)


def test_keys_start_with_tf_and_name_the_layer():
    model = lm.cnn()
    y = model.predict(as_dask(lm.sample(model, 4), 2))
    assert y.name.startswith("tf-fc-")  # named after the last layer of the fused chain
    for k in optimized_keys(y):
        assert name_of(k).startswith(("tf-", "array-")), k


def test_fuse_false_is_one_layer_per_node_fused_by_dask():
    model = lm.cnn()
    feed = lm.sample(model, 8)
    y = model.predict(as_dask(feed, 2), fuse=False)
    layers = [k for k in y.__dask_graph__().layers if k.startswith("tf-")
              and not k.startswith("tf-weight-")]
    assert len(layers) == len(model.graph.nodes)
    compute = {k for k in optimized_keys(y) if name_of(k).startswith("tf-")
               and not name_of(k).startswith("tf-weight-")}
    # Dask fuses the chain; the layer that reads the 4-d input contracts its non-batch axes
    # and Dask never fuses such a layer with one that does not: 2 tasks per chunk
    assert len(compute) <= 8
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def graph_bytes(y: da.Array) -> int:
    (opt,) = dask.optimize(y)
    return len(pickle.dumps(dict(opt.__dask_graph__()), protocol=5))


def test_graph_size_does_not_grow_with_chunks_times_weights():
    model = lm.mlp((64, 512, 512, 10))
    weight_bytes = sum(np.asarray(w).nbytes for w in model.graph.initializers.values())
    sizes = {}
    for n in (4, 8, 16):
        x = da.ones((8 * n, 64), dtype=np.float32, chunks=(8, 64))
        sizes[n] = graph_bytes(model.predict(x))
    assert sizes[4] > weight_bytes  # the weights are in the graph once...
    assert sizes[4] < 1.2 * weight_bytes + 50_000
    per_chunk = (sizes[16] - sizes[8]) / 8
    assert per_chunk < 3_000, sizes  # ...and each extra chunk adds a few hundred bytes
    assert sizes[16] - sizes[4] < 0.05 * weight_bytes, sizes


# --- non-batch-local nodes -----------------------------------------------------------------------
def test_batch_mixing_node_runs_whole_with_warning():
    model = lm.batch_mixing()
    feed = lm.sample(model, 7)
    with pytest.warns(UserWarning, match="batch_mean.*not batch-local"):
        y = model.predict(as_dask(feed, 2))
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-6)
    assert y.chunks[0] == (2, 2, 2, 1)


def test_shape_derived_reshape_stays_batch_local():
    model = lm.torch_flatten()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.predict(as_dask(lm.sample(model, 4), 2))


# --- bad input, refused before anything runs -----------------------------------------------------
def poisoned(shape, dtype, chunks) -> da.Array:
    """A Dask array that fails if any chunk is ever computed."""
    def boom(block):
        raise AssertionError("a task ran")
    return da.zeros(shape, dtype=dtype, chunks=chunks).map_blocks(boom, dtype=dtype)


def test_dtype_error_matches_run_and_submits_nothing():
    model = lm.cnn()
    with pytest.raises(DTypeError) as run_err:
        model.run(None, {"x": np.zeros((4, 3, 8, 8), np.float64)})
    with pytest.raises(DTypeError) as err:
        model.predict(poisoned((4, 3, 8, 8), np.float64, (2, 3, 8, 8)))
    assert str(err.value) == str(run_err.value)


def test_shape_error_matches_run():
    model = lm.cnn()
    with pytest.raises(InputError) as run_err:
        model.run(None, {"x": np.zeros((4, 3, 9, 9), np.float32)})
    with pytest.raises(InputError) as err:
        model.predict(poisoned((4, 3, 9, 9), np.float32, (2, 3, 9, 9)))
    assert str(err.value) == str(run_err.value)


def test_unknown_output_and_input_names():
    model = lm.cnn()
    x = da.zeros((4, 3, 8, 8), dtype=np.float32, chunks=2)
    with pytest.raises(InputError, match="unknown output"):
        model.predict(x, outputs=["nope"])
    with pytest.raises(InputError, match="unexpected input"):
        model.predict({"x": x, "z": x})


def test_nonbatch_chunking_is_rechunked_with_warning():
    model = lm.cnn()
    feed = lm.sample(model, 6)
    x = da.from_array(feed["x"], chunks=(2, 3, 4, 8))
    with pytest.warns(UserWarning, match=r"non-batch axis \[2\]"):
        y = model.predict(x)
    assert y.chunks[0] == (2, 2, 2)
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_nonbatch_chunking_refused_past_memory_limit(monkeypatch):
    monkeypatch.setattr(lower, "MAX_CHUNK_BYTES", 4096)
    model = lm.cnn()
    x = poisoned((8, 3, 8, 8), np.float32, (8, 3, 4, 4))  # whole rows: 8 * 768 B > 4 KiB
    with pytest.raises(ShapeError, match=r"MAX_CHUNK_BYTES.*rechunk\(\{0: 5, 2: -1, 3: -1\}\)"):
        model.predict(x)


def test_unknown_chunk_sizes_refused():
    model = lm.cnn()
    x = da.zeros((8, 3, 8, 8), dtype=np.float32, chunks=2)
    x = x[x[:, 0, 0, 0] == 0]
    with pytest.raises(ShapeError, match="compute_chunk_sizes"):
        model.predict(x)


def test_a_task_drops_each_value_after_its_last_reader():
    """run_unit frees intermediates as it goes (peak memory is the live set, and the cpu
    kernels can recycle output buffers), keeping only the program's outputs."""
    from taskflow.dask.units import Bind, Program, _releases, run_unit

    nodes = (("a", "Relu", ("x",), ("r",), {}), ("b", "Neg", ("r",), ("n",), {}),
             ("c", "Add", ("r", "n"), ("s",), {}), ("d", "Abs", ("s",), ("out",), {}))
    program = Program("p", nodes, (Bind("x", ((0, None),), batched=True),), (), ("out",))
    assert _releases(program) == [("x",), (), ("r", "n"), ("s",)]
    x = np.array([-1.0, 2.0], np.float32)
    np.testing.assert_array_equal(run_unit(program, x), np.zeros(2, np.float32))
