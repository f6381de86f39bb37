"""ONNX's conformance models through ``Model.predict``: every one that runs in-process with a
batch-like first axis gives ``Model.run``'s numbers with chunks of 1 and 2 rows and a ragged
last chunk, on the threaded scheduler and on a LocalCluster.

The models are onnx's own (``light``, ``pytorch-converted``, ``pytorch-operator``, ``simple``,
and the node cases of :data:`NODE_MODULES`). Dim 0 of the inputs that share it is made
symbolic; a model that then no longer runs in-process at other batch sizes has no batch-like
first axis and is skipped with that reason, as is one taskflow cannot load (the conformance
suite lists why). A node may still run on the whole batch (a Softmax over axis 0): then the
result must be right all the same.
"""

from __future__ import annotations

import glob
import importlib
import os
import warnings

import dask
import dask.array as da
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import taskflow as tf
from taskflow.errors import TaskflowError

pytestmark = pytest.mark.timeout(300)

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
KINDS = ("pytorch-converted", "pytorch-operator", "simple", "light")
#: Node cases whose ops move, reduce or mix axes (where a batch analysis can go wrong), plus
#: the families transformers and CNNs are built of. Collecting all node cases takes 30 s.
NODE_MODULES = ("transpose", "reshape", "flatten", "squeeze", "unsqueeze", "concat", "slice",
                "split", "gather", "expand", "tile", "softmax", "logsoftmax",
                "layernormalization", "reducemean", "reducesum", "reducemax", "argmax",
                "matmul", "gemm", "einsum", "conv", "batch_normalization",
                "instance_normalization", "where", "depthtospace", "pad", "shape", "size",
                "constantofshape", "lrn", "hardmax")
#: The nine light model-zoo models (224x224 images; SqueezeNet on the LocalCluster too).
#: ResNet-50, DenseNet-121 and VGG-19 cost 10-30 s each on 2 cores (a trace, a predict and a
#: run of 3 images): they are ``slow`` and run with ``TASKFLOW_TEST_ALL_LIGHT=1``.
LIGHT = tuple(f"light_{n}" for n in ("bvlc_alexnet", "densenet121", "inception_v1",
                                      "inception_v2", "resnet50", "shufflenet", "squeezenet",
                                      "vgg19", "zfnet512"))
BATCH = 3
CHUNKS = (1, 2)  # a one-row chunk, then a two-row (ragged with respect to the first) one


HEAVY_LIGHT = {"light_resnet50", "light_densenet121", "light_vgg19"}
_HEAVY = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("TASKFLOW_TEST_ALL_LIGHT") != "1",
    reason="a 10-30 s model zoo CNN: set TASKFLOW_TEST_ALL_LIGHT=1 to run it too")]


def _dir_cases() -> list:
    cases = []
    for kind in KINDS:
        if kind == "light":
            cases += [pytest.param((kind, os.path.join(DATA, kind, f"{n}.onnx")),
                                   marks=_HEAVY if n in HEAVY_LIGHT else (), id=f"light-{n}")
                      for n in LIGHT]
            continue
        for d in sorted(glob.glob(os.path.join(DATA, kind, "test_*"))):
            cases.append((kind, d))
    return cases


def _node_cases() -> list[tuple[str, str]]:
    from onnx.backend.test.case.node import _NodeTestCases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in NODE_MODULES:
            importlib.import_module(f"onnx.backend.test.case.node.{m}")
    # _NodeTestCases is onnx's global list: other test modules may have filled it with every
    # op's cases already, so keep the cases of NODE_MODULES' ops (and their expansions) only
    wanted = {m.replace("_", "") for m in NODE_MODULES}
    base = {tc.name for tc in _NodeTestCases if len(tc.model.graph.node) == 1
            and tc.model.graph.node[0].op_type.lower() in wanted}
    return [("node", tc.name) for tc in _NodeTestCases
            if tc.name.split("_expanded")[0] in base]


def _load_case(kind: str, where: str) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """The model and the inputs of its first data set."""
    if kind == "node":
        from onnx.backend.test.case.node import _NodeTestCases

        tc = next(t for t in _NodeTestCases if t.name == where)
        return tc.model, [np.asarray(a) for a in tc.data_sets[0][0]]
    if kind == "light":
        proto = onnx.load(where)
        inits = {i.name for i in proto.graph.initializer}
        x = next(i for i in proto.graph.input if i.name not in inits)
        shape = [d.dim_value or 1 for d in x.type.tensor_type.shape.dim]
        return proto, [np.zeros(shape, np.float32)]
    proto = onnx.load(os.path.join(where, "model.onnx"))
    files = sorted(glob.glob(os.path.join(where, "test_data_set_0", "input_*.pb")))
    inputs = []
    for f in files:
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        inputs.append(numpy_helper.to_array(t))
    return proto, inputs


def _symbolic_batch(proto: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy whose inputs ``names`` (and outputs) have a symbolic dim 0."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    del proto.graph.value_info[:]
    for v in [*proto.graph.input, *proto.graph.output]:
        if v.name in names or v in proto.graph.output:
            dims = v.type.tensor_type.shape.dim
            if len(dims):
                dims[0].ClearField("dim_value")
                dims[0].dim_param = "N"
    return proto


def _batch_feed(inputs: dict[str, np.ndarray], names: set[str], d: int,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs ``names`` grown (or cut) to :data:`BATCH` rows: the stored rows, then rows of
    random floats (integer inputs repeat stored rows: they are often indices)."""
    feed = {}
    for name, a in inputs.items():
        if name not in names:
            feed[name] = a
            continue
        reps = -(-BATCH // d)
        grown = np.concatenate([a] * reps)[:BATCH]
        if a.dtype.kind == "f":
            fresh = rng.standard_normal(grown.shape).astype(a.dtype)
            grown = np.concatenate([a[:BATCH], fresh[min(d, BATCH):]])[:BATCH]
        feed[name] = grown
    return feed


def _prepare(kind: str, where: str) -> tuple[tf.Model, dict[str, np.ndarray], list]:
    proto, arrays = _load_case(kind, where)
    inits = {i.name for i in proto.graph.initializer}
    graph_inputs = [i.name for i in proto.graph.input if i.name not in inits]
    inputs = dict(zip(graph_inputs, arrays))
    if not inputs or any(a.ndim == 0 for a in inputs.values()):
        pytest.skip("no input with a first axis")
    first = next(iter(inputs.values()))
    d = first.shape[0]
    if d == 0:
        pytest.skip("an empty first axis")
    # a 1-d integer input is a shape, axes or repeats operand, not data with a batch
    names = {n for n, a in inputs.items() if a.shape[0] == d and (a.ndim > 1 or
                                                                   a.dtype.kind == "f")}
    if not names:
        pytest.skip("no data input with a first axis")
    try:
        # a batch-1 export: the loader makes its batch symbolic where sound (rewriting Reshape
        # targets); otherwise dim 0 is made symbolic here
        model = tf.load(proto)
        if not all(v.shape and not isinstance(v.shape[0], int)
                   for v in model.graph.inputs if v.name in names):
            model = tf.load(_symbolic_batch(proto, names))
    except (TaskflowError, onnx.checker.ValidationError, ValueError) as exc:
        pytest.skip(f"taskflow does not load it (the conformance suite says why): {exc}"[:200])
    feed = _batch_feed(inputs, names, d, np.random.default_rng(0))
    try:
        with np.errstate(all="ignore"):
            want = model.run(None, feed)
            if kind != "light":  # the batch sizes the Dask lowering traces at
                model.run(None, {n: a[:2] if n in names else a for n, a in feed.items()})
    except Exception as exc:
        pytest.skip(f"no batch-like first axis: Model.run fails at batch 2 or {BATCH}: "
                    f"{type(exc).__name__}"[:200])
    return model, feed, want


def _check(model: tf.Model, feed: dict[str, np.ndarray], want: list, **compute) -> None:
    batch = {n for n, v in zip(model.graph.input_names, model.graph.inputs)
             if v.shape and not isinstance(v.shape[0], int)}
    x = {n: da.from_array(a, chunks=(CHUNKS, *a.shape[1:])) if n in batch else a
         for n, a in feed.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whole-batch nodes warn; the numbers must still hold
        got = model.predict(x)
    got = got if isinstance(got, tuple) else (got,)
    with np.errstate(all="ignore"):
        values = dask.compute(*got, **compute)
    for name, g, w, lazy in zip(model.graph.output_names, values, want, got):
        w = np.asarray(w)
        assert g.shape == w.shape, (name, g.shape, w.shape)
        assert all(d != d or d == s for d, s in zip(lazy.shape, w.shape)), (lazy.shape, w.shape)
        assert g.dtype == w.dtype, (name, g.dtype, w.dtype)
        if w.dtype.kind in "fc":
            scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=0.0)) or 1.0
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale, equal_nan=True,
                                       err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


_DIR_CASES = _dir_cases()
_NODE_CASES = _node_cases()


def _id(case: tuple[str, str]) -> str:
    return f"{case[0]}-{os.path.basename(case[1]).removesuffix('.onnx')}"


@pytest.mark.parametrize("case", _DIR_CASES + _NODE_CASES, ids=_id)
def test_predict_equals_run_threaded(case):
    model, feed, want = _prepare(*case)
    _check(model, feed, want, scheduler="threads")


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.mark.parametrize("case", [c for c in _DIR_CASES if not hasattr(c, "values")]
                         + [c for c in _DIR_CASES if hasattr(c, "values")
                            and c.values[0][1].endswith("squeezenet.onnx")], ids=_id)
def test_predict_equals_run_on_a_local_cluster(case, cluster_client):
    model, feed, want = _prepare(*case)
    _check(model, feed, want)
