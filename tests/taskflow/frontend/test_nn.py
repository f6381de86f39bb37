"""taskflow.frontend.nn: each layer's graph against a plain numpy computation of the layer
(float64), whole networks against ONNX Runtime on the exported ONNX, save/load round trips,
state and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

import taskflow
from taskflow.errors import GraphError, InputError, ShapeError
from taskflow.frontend import nn
from taskflow.ir.graph import BATCH

#: float32 kernels against float64 numpy: a few ulps per accumulated term.
RTOL, ATOL = 1e-4, 1e-5


# --- plain numpy definitions of each layer, in float64 -------------------------------------------

def _windows(x, k, s, p, d=(1, 1), fill=0.0):
    """Yield (i, j, patch[N, C, kh, kw]) over the padded input."""
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])), constant_values=fill)
    oh = (x.shape[2] + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (x.shape[3] + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    for i in range(oh):
        for j in range(ow):
            yield i, j, xp[:, :, i * s[0]:i * s[0] + d[0] * (k[0] - 1) + 1:d[0],
                           j * s[1]:j * s[1] + d[1] * (k[1] - 1) + 1:d[1]]


def np_conv(x, layer):
    w = layer.params["weight"].astype(np.float64)
    m, cg = w.shape[:2]
    g, mg = layer.groups, m // layer.groups
    out = {}
    for i, j, patch in _windows(x, layer.kernel, layer.stride, layer.padding, layer.dilation):
        out[i, j] = np.concatenate([
            np.einsum("nckl,mckl->nm", patch[:, k * cg:(k + 1) * cg], w[k * mg:(k + 1) * mg])
            for k in range(g)], axis=1)
    oh, ow = max(i for i, _ in out) + 1, max(j for _, j in out) + 1
    y = np.stack([np.stack([out[i, j] for j in range(ow)], -1) for i in range(oh)], -2)
    return y + layer.params.get("bias", np.zeros(m))[:, None, None]


def np_pool(x, layer, reduce):
    avg = reduce == "avg"
    fill = 0.0 if avg else -np.inf
    sums, counts = {}, {}
    ones = np.ones_like(x)
    for (i, j, patch), (_, _, valid) in zip(
            _windows(x, layer.kernel, layer.stride, layer.padding, fill=fill),
            _windows(ones, layer.kernel, layer.stride, layer.padding)):
        sums[i, j] = patch.sum((2, 3)) if avg else patch.max((2, 3))
        counts[i, j] = (np.prod(layer.kernel) if getattr(layer, "count_include_pad", False)
                        else valid.sum((2, 3)))
    oh, ow = max(i for i, _ in sums) + 1, max(j for _, j in sums) + 1
    y = np.stack([np.stack([sums[i, j] / (counts[i, j] if avg else 1) for j in range(ow)], -1)
                  for i in range(oh)], -2)
    return y


def np_batchnorm(x, layer):
    p = {k: v.astype(np.float64)[:, None, None] for k, v in layer.params.items()}
    return p["weight"] * (x - p["running_mean"]) / np.sqrt(p["running_var"] + layer.eps) \
        + p["bias"]


def np_layernorm(x, layer):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + layer.eps) * layer.params["weight"] + layer.params["bias"]


def np_gelu(x, layer):
    if layer.approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def np_softmax(x, layer):
    e = np.exp(x - x.max(layer.axis, keepdims=True))
    return e / e.sum(layer.axis, keepdims=True)


def _with_random_state(layer, seed=1):
    """Non-trivial parameters (BN/LN start as identity; biases start at zero)."""
    rng = np.random.default_rng(seed)
    state = {k: rng.uniform(0.5, 1.5, v.shape) if k in ("weight", "running_var")
             else rng.normal(size=v.shape) for k, v in layer.state().items()}
    if "weight" in state and layer.params["weight"].ndim > 1:
        state["weight"] = rng.normal(size=layer.params["weight"].shape)
    layer.load_state(state)
    return layer


CASES = {
    "Dense": (lambda: nn.Dense(12, 5), (12,),
              lambda x, l: x @ l.params["weight"].T + l.params["bias"]),
    "Dense-nobias": (lambda: nn.Dense(12, 5, bias=False), (12,),
                     lambda x, l: x @ l.params["weight"].T),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), (3, 7, 6), np_conv),
    "Conv2d-pad-stride": (lambda: nn.Conv2d(3, 4, (3, 2), stride=2, padding=(1, 0)), (3, 7, 6),
                          np_conv),
    "Conv2d-dilation-groups": (lambda: nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2),
                               (4, 6, 6), np_conv),
    "Conv2d-nobias": (lambda: nn.Conv2d(2, 3, 1, bias=False), (2, 4, 4), np_conv),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (3, 6, 7), lambda x, l: np_pool(x, l, "max")),
    "MaxPool2d-pad": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 7, 7),
                      lambda x, l: np_pool(x, l, "max")),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (3, 6, 6), lambda x, l: np_pool(x, l, "avg")),
    "AvgPool2d-pad": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 7, 7),
                      lambda x, l: np_pool(x, l, "avg")),
    "AvgPool2d-pad-include": (lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=True), (2, 7, 7),
                              lambda x, l: np_pool(x, l, "avg")),
    "GlobalAvgPool2d": (nn.GlobalAvgPool2d, (3, 5, 4), lambda x, l: x.mean((2, 3), keepdims=True)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(3, eps=1e-3), (3, 4, 5), np_batchnorm),
    "LayerNorm": (lambda: nn.LayerNorm(10), (10,), np_layernorm),
    "LayerNorm-3d": (lambda: nn.LayerNorm(6, eps=1e-6), (4, 6), np_layernorm),
    "ReLU": (nn.ReLU, (3, 4, 4), lambda x, l: np.maximum(x, 0)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), (9,), lambda x, l: np.where(x >= 0, x, 0.2 * x)),
    "Sigmoid": (nn.Sigmoid, (9,), lambda x, l: 1 / (1 + np.exp(-x))),
    "Tanh": (nn.Tanh, (9,), lambda x, l: np.tanh(x)),
    "GELU": (nn.GELU, (9,), np_gelu),
    "GELU-tanh": (lambda: nn.GELU("tanh"), (9,), np_gelu),
    "Softmax": (nn.Softmax, (9,), np_softmax),
    "Softmax-axis1": (lambda: nn.Softmax(axis=1), (3, 4, 4), np_softmax),
    "Flatten": (nn.Flatten, (3, 4, 5), lambda x, l: x.reshape(len(x), -1)),
    "Dropout": (lambda: nn.Dropout(0.3), (9,), lambda x, l: x),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_numpy(case):
    make, shape, expected = CASES[case]
    layer = make()
    if layer.params:
        _with_random_state(layer)
    net = nn.Sequential([layer], input_shape=shape, name=case)
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    (y,) = net.to_model().run(None, {"input": x})
    want = expected(x.astype(np.float64), layer)
    assert y.dtype == np.float32
    assert y.shape == want.shape
    declared = net.output_shape
    assert declared[0] == BATCH and tuple(declared[1:]) == want.shape[1:]
    np.testing.assert_allclose(y, want, rtol=RTOL, atol=ATOL, err_msg=case)


def _cnn() -> nn.Sequential:
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.1),
              nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
              nn.BatchNorm2d(8), nn.ReLU(), nn.AvgPool2d(2, stride=1), nn.Conv2d(8, 6, 1),
              nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dropout(0.2), nn.Dense(6, 4),
              nn.Softmax()]
    for k, layer in enumerate(layers):
        if layer.params:
            _with_random_state(layer, seed=k)
    return nn.Sequential(layers, input_shape=(3, 12, 12), name="cnn")


def _mlp() -> nn.Sequential:
    layers = [nn.Dense(16, 32, seed=1), nn.LayerNorm(32), nn.GELU(), nn.Dense(32, 32, seed=2),
              nn.Tanh(), nn.Dense(32, 8, seed=3), nn.Sigmoid()]
    _with_random_state(layers[1])
    return nn.Sequential(layers, input_shape=(16,), name="mlp")


NETS = {"cnn": _cnn, "mlp": _mlp}


@pytest.mark.parametrize("name", sorted(NETS))
def test_sequential_matches_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    from taskflow.frontend.onnx_export import to_onnx

    net = NETS[name]()
    proto = to_onnx(net.to_graph())
    x = np.random.default_rng(3).normal(size=(5, *net.input_shape[1:])).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {"input": x})
    (got,) = net.to_model().run(None, {"input": x})
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", sorted(NETS))
def test_save_load_round_trip(name, tmp_path):
    net = NETS[name]()
    model = net.to_model()
    path = tmp_path / f"{name}.onnx"
    model.save(path)
    loaded = taskflow.load(path)
    assert loaded.get_inputs()[0].name == "input"
    assert loaded.get_inputs()[0].shape == [BATCH, *net.input_shape[1:]]
    assert loaded.get_outputs()[0].name == "output"
    for batch in (1, 4):
        x = np.random.default_rng(batch).normal(size=(batch, *net.input_shape[1:]))
        feed = {"input": x.astype(np.float32)}
        np.testing.assert_array_equal(loaded.run(None, feed)[0], model.run(None, feed)[0])


def test_graph_form():
    g = nn.Sequential([nn.Dense(4, 3), nn.ReLU()], input_shape=(4,), name="g").to_graph()
    assert g.name == "g"
    assert g.input_names == ["input"] and g.output_names == ["output"]
    assert g.inputs[0].shape == (BATCH, 4) and g.inputs[0].dtype == np.float32
    assert g.outputs[0].shape == (BATCH, 3)
    gemm = g.nodes[0]
    assert gemm.op == "Gemm" and gemm.attrs == {"transB": 1}
    assert g.initializers[gemm.inputs[1]].shape == (3, 4)
    assert all(a.dtype == np.float32 for a in g.initializers.values())


def test_state_round_trip_and_seeded_init():
    a, b = _mlp(), _mlp()
    np.testing.assert_array_equal(a[0].params["weight"], b[0].params["weight"])
    assert not np.array_equal(nn.Dense(16, 32, seed=1).params["weight"],
                              nn.Dense(16, 32, seed=2).params["weight"])
    w = nn.Dense(100, 50, seed=0).params["weight"]
    assert w.dtype == np.float32 and np.abs(w).max() <= math.sqrt(6 / 100)  # He-uniform bound
    c = nn.Sequential([nn.Dense(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Dense(32, 32), nn.Tanh(),
                       nn.Dense(32, 8), nn.Sigmoid()], input_shape=(16,))
    c.load_state({k: v.astype(np.float64) for k, v in a.state().items()})
    assert set(c.state()) == set(a.state()) and "1.bias" in c.state()
    x = {"input": np.ones((2, 16), np.float32)}
    np.testing.assert_array_equal(c.to_model().run(None, x)[0], a.to_model().run(None, x)[0])
    c.state()["0.weight"][:] = 0  # state() hands out copies
    assert c[0].params["weight"].any()


def test_load_state_errors_name_the_parameter():
    net = nn.Sequential([nn.Dense(4, 3), nn.ReLU()], input_shape=(4,))
    with pytest.raises(ShapeError, match=r"layer 0: .*'weight' has shape \(4, 3\)"):
        net.load_state({"0.weight": np.zeros((4, 3)), "0.bias": np.zeros(3)})
    with pytest.raises(InputError, match=r"layer 0: .*missing \['bias'\]"):
        net.load_state({"0.weight": np.zeros((3, 4))})
    with pytest.raises(InputError, match=r"'7.weight' names no layer"):
        net.load_state({"7.weight": np.zeros(3)})


def test_shape_errors_name_the_input_and_layer():
    with pytest.raises(ShapeError, match=r"layer 0 does not fit the output of input 'input'.*"
                                         r"Dense\(10, 3\) expects \(N, 10\).*\(N, 1, 8, 8\)"):
        nn.Sequential([nn.Dense(10, 3)], input_shape=(1, 8, 8))
    with pytest.raises(ShapeError, match=r"layer 2 does not fit the output of layer 1 "
                                         r"\(Flatten.*\(N, 64\)"):
        nn.Sequential([nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Dense(100, 2)],
                      input_shape=(1, 4, 4))
    with pytest.raises(ShapeError, match="smaller than the window"):
        nn.Sequential([nn.MaxPool2d(5)], input_shape=(1, 4, 4))
    with pytest.raises(ShapeError, match="groups=3"):
        nn.Conv2d(4, 6, 3, groups=3)
    with pytest.raises(GraphError, match="no layers"):
        nn.Sequential([], input_shape=(4,))
    model = nn.Sequential([nn.Conv2d(1, 2, 3)], input_shape=(1, 8, 8)).to_model()
    with pytest.raises(InputError, match=r"input 'input' has shape \(2, 1, 7, 8\).*"
                                         r"\(N, 1, 8, 8\)"):
        model.run(None, {"input": np.zeros((2, 1, 7, 8), np.float32)})
    with pytest.raises(InputError, match=r"input 'input'.*rank 3"):
        model.run(None, {"input": np.zeros((1, 8, 8), np.float32)})
