"""Devices: names parsed before any work, a gpu refused clearly where CuPy or CUDA is missing,
``strict`` for ops without a gpu kernel, and ``Model.run`` on a gpu (inputs moved once, outputs
of the kind that came in), down to ``taskflow run --device``.

Without a GPU, :class:`FakeCupy` stands in for CuPy: numpy under CuPy's names, whose "device
arrays" are a numpy subclass (:class:`DeviceArray`), so the plumbing (what is uploaded, when,
and what comes back) is tested for real while the kernels compute with numpy. What CuPy itself
does is tested only where it is installed and finds a GPU (the ``gpu`` mark, at the end).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from taskflow.ops import device
from taskflow.ops.device import DeviceError, gpu_problem, parse_device

import taskflow as tf
from taskflow import ops
from taskflow.cli import main
from tests.conformance.light_models import light_path, with_random_weights

DIGITS = "taskflow/data/digits_cnn.onnx"


class DeviceArray(np.ndarray):
    """A numpy array playing a CuPy array on the fake device."""


def _on_device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
        return value.view(DeviceArray)
    if isinstance(value, (tuple, list)):
        return type(value)(_on_device(v) for v in value)
    return value


class FakeCupy(types.ModuleType):
    """numpy under CuPy's names, with ``devices`` CUDA devices; records every upload.

    As in CuPy, every array its functions return is a device array.
    """

    ndarray = DeviceArray

    def __init__(self, devices: int = 1):
        super().__init__("cupy")
        self.uploads: list[np.ndarray] = []
        self.current: list[int] = []
        runtime = SimpleNamespace(getDeviceCount=lambda: devices)
        self.cuda = SimpleNamespace(runtime=runtime, Device=self._device)

    @contextlib.contextmanager
    def _device(self, index: int):
        self.current.append(index)
        yield

    def __getattr__(self, name: str):
        attr = getattr(np, name)
        if not callable(attr) or isinstance(attr, type):
            return attr
        return functools.wraps(attr)(lambda *args, **kw: _on_device(attr(*args, **kw)))

    def asarray(self, x, dtype=None):
        if isinstance(x, DeviceArray):
            return x if dtype is None else x.astype(dtype)
        self.uploads.append(x)
        return np.array(x, dtype=dtype).view(DeviceArray)

    def asnumpy(self, x):
        return np.array(x).view(np.ndarray)

    def ascontiguousarray(self, x):
        return np.ascontiguousarray(x).view(DeviceArray)


@pytest.fixture
def fake_gpu(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(device, "_cupy", fake)
    return fake


@pytest.fixture
def no_cupy(monkeypatch):
    """CuPy not importable, whatever this machine has."""
    def fail():
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(device, "_cupy", None)
    monkeypatch.setattr(device, "_import_cupy", fail)
    monkeypatch.setitem(sys.modules, "cupy", None)


def odd_ops_model() -> onnx.ModelProto:
    """Relu -> TopK and Hardmax: two ops with no gpu kernel, and one with."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("TopK", ["r", "k"], ["v", "i"], axis=-1),
             helper.make_node("Hardmax", ["v"], ["y"])]
    graph = helper.make_graph(
        nodes, "odd", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[onnx.numpy_helper.from_array(np.array([3], np.int64), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


# --- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, canonical", [
    ("cpu", "cpu"), (" CPU ", "cpu"), ("gpu", "gpu"), ("cuda", "gpu"), ("CUDA", "gpu"),
    ("cuda:0", "gpu:0"), ("Cuda:2", "gpu:2"), ("gpu:1", "gpu:1"), ("reference", "reference")])
def test_device_names_become_canonical(given, canonical):
    assert parse_device(given) == canonical


@pytest.mark.parametrize("bad", ["banana", "", "tpu", "cuda:", "cuda:-1", "gpu0", "cpu:0",
                                 "cuda:1:2", None, 0])
def test_other_names_are_refused_naming_the_argument_the_choices_and_the_value(bad):
    with pytest.raises(DeviceError) as info:
        parse_device(bad, argument="--device")
    message = str(info.value)
    assert isinstance(info.value, tf.TaskflowError) and isinstance(info.value, ValueError)
    assert message.startswith(f"--device={bad!r}")
    for name in ("'cpu'", "'gpu'", "'cuda'", "'cuda:N'", "'auto'", "'reference'"):
        assert name in message


def test_auto_takes_the_gpu_only_where_cupy_finds_one(monkeypatch, no_cupy):
    assert parse_device("auto") == "cpu"
    monkeypatch.setattr(device, "_cupy", FakeCupy(devices=0))
    assert parse_device("auto") == "cpu"
    monkeypatch.setattr(device, "_cupy", FakeCupy(devices=1))
    assert parse_device("auto") == "gpu"


def test_a_bad_device_is_refused_before_the_file_is_read(tmp_path):
    with pytest.raises(DeviceError, match="banana"):
        tf.load(tmp_path / "no-such-model.onnx", device="banana")
    graph = tf.nn.Sequential([tf.nn.Dense(4, 3)], input_shape=(4,)).to_graph()
    with pytest.raises(tf.TaskflowError, match="'banana'"):
        tf.Model(graph, device="banana")


@pytest.mark.parametrize("name", ["gpu", "cuda", "cuda:0", "CUDA:1"])
def test_a_gpu_without_cupy_is_refused_at_load_saying_how_to_install_it(name, no_cupy,
                                                                        tmp_path):
    with pytest.raises(tf.TaskflowError) as info:
        tf.load(tmp_path / "no-such-model.onnx", device=name)  # before the file is read
    message = str(info.value)
    assert f"device={name!r}" in message
    assert "CuPy" in message and 'pip install "taskflow[gpu]"' in message
    assert not isinstance(info.value, DeviceError)  # the name was fine


def test_a_gpu_on_this_machine_needs_cupy_and_a_device():
    """No stand-in: what this machine really has."""
    problem = gpu_problem("gpu")
    if problem is None:
        pytest.skip("CuPy finds a CUDA device here: test_digits_on_a_real_gpu covers it")
    with pytest.raises(tf.TaskflowError) as info:
        tf.load(DIGITS, device="gpu")
    assert "CuPy" in str(info.value) and str(info.value).endswith(problem)


def test_a_gpu_without_a_cuda_device_or_that_device_is_refused(monkeypatch):
    monkeypatch.setattr(device, "_cupy", FakeCupy(devices=0))
    with pytest.raises(tf.TaskflowError, match="finds no CUDA device"):
        tf.load(DIGITS, device="gpu")
    monkeypatch.setattr(device, "_cupy", FakeCupy(devices=2))
    with pytest.raises(tf.TaskflowError, match=r"CUDA device 2 .* finds 2 \(cuda:0 \.\. cuda:1\)"):
        tf.load(DIGITS, device="cuda:2")
    assert tf.load(DIGITS, device="cuda:1").device == "gpu:1"


# --- strict: ops without a gpu kernel -----------------------------------------------------------
def test_a_gpu_model_with_ops_lacking_gpu_kernels_is_refused_naming_them_all(fake_gpu):
    assert not ops.get("TopK").has_kernel("gpu") and not ops.get("Hardmax").has_kernel("gpu")
    for strict in ({}, {"strict": True}, {"strict": None}):
        with pytest.raises(tf.UnsupportedOpError) as info:
            tf.load(odd_ops_model(), device="gpu", **strict)
        assert "Hardmax, TopK" in str(info.value) and "strict=False" in str(info.value)
        assert sorted(op for op, _ in info.value.ops) == ["Hardmax", "TopK"]


def test_strict_false_runs_them_on_the_host_with_one_warning(fake_gpu):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tf.load(odd_ops_model(), device="gpu", strict=False)
        x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
        y = model.run(None, {"x": x})[0]
        model.run(None, {"x": x})
    gpu_warnings = [w for w in caught if "gpu" in str(w.message)]
    assert len(gpu_warnings) == 1, [str(w.message) for w in caught]
    assert "Hardmax, TopK" in str(gpu_warnings[0].message)
    np.testing.assert_array_equal(y, tf.load(odd_ops_model()).run(None, {"x": x})[0])
    assert type(y) is np.ndarray
    # the fallback ran on host copies and handed its results back to the device
    topk = ops.get("TopK").kernel("gpu", warn=False)
    values, _ = topk(x.view(DeviceArray), np.array([2]))
    assert getattr(topk, "host_fallback", False) and type(values) is DeviceArray


def test_cpu_keeps_its_behaviour_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = tf.load(odd_ops_model())  # TopK and Hardmax: their references are cpu kernels
        model.run(None, {"x": np.ones((2, 6), np.float32)})
    assert model.device == "cpu" and model.strict is False


# --- Model.run on the (fake) gpu ----------------------------------------------------------------
def test_run_on_a_gpu_moves_the_input_once_and_returns_what_came_in(fake_gpu):
    cpu, gpu = tf.load(DIGITS), tf.load(DIGITS, device="gpu")
    assert gpu.device == "gpu" and gpu.strict is True
    weights = gpu._plan.constants
    assert all(type(v) is DeviceArray for v in weights.values())  # uploaded at load
    x = np.random.default_rng(1).standard_normal((5, 1, 8, 8)).astype(np.float32)
    fake_gpu.uploads.clear()
    (host_out,) = gpu.run(None, {"input": x})
    assert [u is x for u in fake_gpu.uploads] == [True]  # the input, once; no weight again
    assert type(host_out) is np.ndarray and host_out.flags.c_contiguous
    np.testing.assert_allclose(host_out, cpu.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    fake_gpu.uploads.clear()
    (device_out,) = gpu.run(None, {"input": fake_gpu.asarray(x)})
    assert fake_gpu.uploads == [x] and type(device_out) is DeviceArray  # (the test's upload)
    np.testing.assert_array_equal(np.asarray(device_out), host_out)
    assert gpu._plan.constants is weights


def test_integer_initializers_stay_on_the_host(fake_gpu):
    with pytest.warns(RuntimeWarning, match="TopK"):
        model = tf.load(odd_ops_model(), device="gpu", strict=False)
    assert type(model._plan.constants["k"]) is np.ndarray


def test_run_takes_another_device_for_one_call(monkeypatch):
    fake_gpu = FakeCupy(devices=2)
    monkeypatch.setattr(device, "_cupy", fake_gpu)
    model = tf.load(DIGITS)
    x = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
    want = model.run(None, {"input": x})[0]
    got = model.run(None, {"input": x}, device="cuda:1")[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sorted(model._plans) == ["cpu", "gpu:1"] and fake_gpu.current[-1] == 1
    with pytest.raises(DeviceError, match="banana"):
        model.run(None, {"input": x}, device="banana")


@pytest.mark.parametrize("name", ["squeezenet", "shufflenet"])
def test_mobile_cnns_run_on_the_gpu_kernels_as_on_the_cpu(name, fake_gpu):
    proto = with_random_weights(onnx.load(light_path(name)))
    cpu, gpu = tf.load(proto), tf.load(proto, device="gpu")
    assert all(ops.get(n.op).has_kernel("gpu") for n in gpu.graph.nodes)
    feed_name = cpu.get_inputs()[0].name
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = cpu.run(None, {feed_name: x})[0]
    got = gpu.run(None, {feed_name: x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_transformer_export_runs_on_the_gpu_kernels_as_on_the_cpu(fake_gpu):
    from tests.taskflow.dask.real_models import exported, feed

    path = exported("minilm-torchscript-sdpa")  # skips without torch or the weights
    cpu, gpu = tf.load(path), tf.load(path, device="gpu")
    inputs = feed("minilm-torchscript-sdpa")
    for want, got in zip(cpu.run(None, inputs), gpu.run(None, inputs)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --- the command line ---------------------------------------------------------------------------
def _run_cli(capsys, *extra: str) -> tuple[int, str]:
    code = main(["run", "no-such-model.onnx", "-i", "in.zarr", "-o", "out.zarr", *extra])
    return code, capsys.readouterr().err


def test_cli_refuses_a_bad_device_in_one_line(capsys):
    code, err = _run_cli(capsys, "--device", "banana")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("taskflow run: error: --device='banana' is not a device")
    assert "'cuda:N'" in err


def test_cli_refuses_a_gpu_without_cupy_before_reading_the_model(capsys, no_cupy):
    code, err = _run_cli(capsys, "--device", "gpu")
    assert code == 2 and err.count("\n") == 1
    assert "--device='gpu'" in err and "CuPy" in err and "no-such-model" not in err


def test_cli_passes_the_device_to_the_model(capsys, fake_gpu, monkeypatch, tmp_path):
    seen = {}

    def fake_load(path, **kwargs):
        seen.update(kwargs)
        raise tf.TaskflowError("stop here")

    monkeypatch.setattr("taskflow.model.load", fake_load)
    code, err = _run_cli(capsys, "--device", "CUDA")
    assert code == 2 and "stop here" in err and seen["device"] == "gpu"
    code, err = _run_cli(capsys)
    assert seen["device"] == "cpu"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages: []\n")
    assert main(["run", str(pipeline), "-i", "a", "-o", "b", "--device", "gpu"]) == 2
    assert "--device applies to an ONNX model" in capsys.readouterr().err


# --- on a real GPU ------------------------------------------------------------------------------
@pytest.mark.gpu
def test_digits_on_a_real_gpu():
    cp = pytest.importorskip("cupy", reason="CuPy is not installed: pip install 'taskflow[gpu]'")
    problem = gpu_problem("gpu")
    if problem:
        pytest.skip(problem)
    cpu, gpu = tf.load(DIGITS), tf.load(DIGITS, device="gpu")
    x = np.random.default_rng(4).standard_normal((16, 1, 8, 8)).astype(np.float32)
    want = cpu.run(None, {"input": x})[0]
    (host,) = gpu.run(None, {"input": x})
    (dev,) = gpu.run(None, {"input": cp.asarray(x)})
    assert isinstance(host, np.ndarray) and isinstance(dev, cp.ndarray)
    np.testing.assert_allclose(host, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cp.asnumpy(dev), want, rtol=1e-4, atol=1e-5)
