"""PyTorch as a benchmark peer: taskflow's optimised graph run node by node with
``torch.nn.functional`` (eager, inference mode). A benchmark helper only, imported by
:mod:`taskflow.bench.harness` when torch is installed; it covers the ops of the CNN benchmarks and
raises ``NotImplementedError`` for anything else (the benchmark then skips PyTorch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taskflow.ir.graph import Graph, Node
from taskflow.ops.conv import resolve_pads, spatial_attrs

Fn = Callable[..., Any]


def _activation(name: str, params: list[float]) -> Fn:
    p = list(params or [])
    table: dict[str, Fn] = {
        "": lambda y: y,
        "Relu": F.relu,
        "LeakyRelu": lambda y: F.leaky_relu(y, p[0] if p else 0.01),
        "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh,
        "Clip": lambda y: torch.clamp(y, p[0] if p else None, p[1] if len(p) > 1 else None),
        "HardSigmoid": lambda y: torch.clamp(y * (p[0] if p else 0.2)
                                             + (p[1] if len(p) > 1 else 0.5), 0, 1),
        "Gelu": F.gelu,
    }
    if name not in table:
        raise NotImplementedError(f"activation {name!r}")
    return table[name]


def _pad2d(x: Any, kernel: Any, a: dict, fill: float = 0.0) -> tuple[Any, tuple[int, int]]:
    """Resolve ONNX pads; symmetric ones go to the torch op, asymmetric ones to F.pad."""
    s, d = spatial_attrs(2, a.get("strides"), a.get("dilations"))
    pb, pe = resolve_pads(tuple(x.shape[2:]), kernel, s, d, a.get("pads"),
                          a.get("auto_pad", "NOTSET"))
    if pb == pe:
        return x, (pb[0], pb[1])
    return F.pad(x, (pb[1], pe[1], pb[0], pe[0]), value=fill), (0, 0)


def _conv(n: Node, consts: dict) -> Fn:
    a = n.attrs
    act = _activation(a.get("activation", ""), a.get("activation_params", []))
    s, d = spatial_attrs(2, a.get("strides"), a.get("dilations"))

    shuffle = int(a.get("channel_shuffle", 0))

    def run(x, w, b=None, z=None):
        x, pad = _pad2d(x, tuple(w.shape[2:]), a)
        y = act(F.conv2d(x, w, b, s, pad, d, a.get("group", 1)) + (0 if z is None else z))
        return torch.channel_shuffle(y, shuffle) if shuffle > 1 else y
    return run


def _gemm(n: Node, consts: dict) -> Fn:
    a = n.attrs
    act = _activation(a.get("activation", ""), a.get("activation_params", []))

    def run(x, w, c=None):
        x = x.T if a.get("transA", 0) else x
        w = w.T if a.get("transB", 0) else w
        if c is None:
            return act(torch.matmul(x, w) * a.get("alpha", 1.0))
        return act(torch.addmm(c, x, w, beta=a.get("beta", 1.0), alpha=a.get("alpha", 1.0)))
    return run


def _max_pool(n: Node, consts: dict) -> Fn:
    a = n.attrs
    k = tuple(a["kernel_shape"])

    def run(x):
        x, pad = _pad2d(x, k, a, fill=-np.inf)
        s, d = spatial_attrs(2, a.get("strides"), a.get("dilations"))
        return F.max_pool2d(x, k, s, pad, d, ceil_mode=bool(a.get("ceil_mode", 0)))
    return run


def _avg_pool(n: Node, consts: dict) -> Fn:
    a = n.attrs
    k = tuple(a["kernel_shape"])

    def run(x):
        x, pad = _pad2d(x, k, a)
        s, _ = spatial_attrs(2, a.get("strides"), None)
        return F.avg_pool2d(x, k, s, pad, ceil_mode=bool(a.get("ceil_mode", 0)),
                            count_include_pad=bool(a.get("count_include_pad", 0)))
    return run


def _reshape(n: Node, consts: dict) -> Fn:
    target = [int(v) for v in consts[n.inputs[1]].ravel()]

    def run(x, _shape=None):
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(target)]
        return x.reshape(shape)
    return run


def _fused_batch_norm(n: Node, consts: dict) -> Fn:
    act = _activation(n.attrs.get("activation", ""), n.attrs.get("activation_params", []))
    eps = n.attrs.get("epsilon", 1e-5)
    return lambda x, s, b, m, v: act(F.batch_norm(x, m, v, s, b, False, 0.0, eps))


BUILDERS: dict[str, Callable[[Node, dict], Fn]] = {
    "Conv": _conv, "FusedConv": _conv, "Gemm": _gemm, "FusedGemm": _gemm,
    "MaxPool": _max_pool, "AveragePool": _avg_pool, "Reshape": _reshape,
    "GlobalAveragePool": lambda n, c: lambda x: x.mean((2, 3), keepdim=True),
    "Relu": lambda n, c: F.relu,
    "Add": lambda n, c: torch.add, "Mul": lambda n, c: torch.mul,
    "Sub": lambda n, c: torch.sub, "Div": lambda n, c: torch.div,
    "Softmax": lambda n, c: lambda x: torch.softmax(x, n.attrs.get("axis", -1)),
    "Concat": lambda n, c: lambda *xs: torch.cat(xs, n.attrs["axis"]),
    "Transpose": lambda n, c: lambda x: x.permute(*n.attrs["perm"]),
    "ChannelShuffle": lambda n, c: lambda x: torch.channel_shuffle(x, int(n.attrs["group"])),
    "Flatten": lambda n, c: lambda x: torch.flatten(x, n.attrs.get("axis", 1)),
    "BatchNormalization": lambda n, c: lambda x, s, b, m, v: F.batch_norm(
        x, m, v, s, b, False, 0.0, n.attrs.get("epsilon", 1e-5)),
    "FusedBatchNormalization": _fused_batch_norm,
    "LRN": lambda n, c: lambda x: F.local_response_norm(
        x, n.attrs["size"], n.attrs.get("alpha", 1e-4), n.attrs.get("beta", 0.75),
        n.attrs.get("bias", 1.0)),
    "Identity": lambda n, c: lambda x: x,
}


class TorchGraph:
    """Callable ``graph_runner(x) -> first output`` evaluating ``graph`` with torch ops."""

    def __init__(self, graph: Graph):
        missing = sorted({n.op for n in graph.nodes if n.op not in BUILDERS})
        if missing:
            raise NotImplementedError(f"no torch mapping for {missing}")
        self.graph = graph
        self.consts = {k: torch.from_numpy(np.array(v))
                       for k, v in graph.initializers.items()}
        self.steps = [(n, BUILDERS[n.op](n, graph.initializers)) for n in graph.toposort()]
        self.input = graph.inputs[0].name
        self.output = graph.output_names[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        env = dict(self.consts)
        env[self.input] = torch.from_numpy(x)
        with torch.inference_mode():
            for node, fn in self.steps:
                out = fn(*[env[i] if i else None for i in node.inputs])
                env[node.outputs[0]] = out
        return env[self.output].numpy()
