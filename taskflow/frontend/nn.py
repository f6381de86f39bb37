"""A small layer builder that emits taskflow's graph IR (canonical ONNX nodes).

Each layer owns float32 numpy parameters named as in PyTorch (``weight``, ``bias``,
``running_mean``, ``running_var``), so trained weights copy across with :meth:`load_state`.
Initialisation is seeded: He-uniform for layers feeding ReLU-style activations, zero biases.

The file passes 600 lines on purpose: it is a table of small layer classes, each with its
docstring and example, that users read side by side; split, the builder would scatter.

Examples
--------
>>> import numpy as np
>>> from taskflow.frontend import nn
>>> net = nn.Sequential([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 3), nn.Softmax()],
...                     input_shape=(4,), name="mlp")
>>> model = net.to_model()
>>> model.run(None, {"input": np.ones((2, 4), np.float32)})[0].shape
(2, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from taskflow.errors import GraphError, InputError, ShapeError
from taskflow.ir.graph import BATCH, Graph, Node, Shape, Value

if TYPE_CHECKING:
    from taskflow.model import Model

Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | np.integer) else (int(v[0]), int(v[1]))


def _he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class Layer:
    """Base class: parameters, state copying, output shape and the ONNX node it emits.

    A subclass sets ``op`` (the ONNX op type it emits), fills ``params`` in ``__init__``, and
    overrides :meth:`output_shape` and, if the op takes attributes, ``attrs()``.

    Attributes
    ----------
    op : str
        The ONNX op type of the node the layer emits.
    params : dict of str to numpy.ndarray
        Learned float32 tensors by name, in the order the node takes them after the data input.

    Examples
    --------
    A layer of its own: an ONNX op with no parameters that keeps the shape.

    >>> class HardSwish(Layer):
    ...     op = "HardSwish"
    >>> net = Sequential([Dense(4, 8), HardSwish(), Dense(8, 2)], input_shape=(4,))
    >>> [n.op for n in net.to_graph().nodes]
    ['Gemm', 'HardSwish', 'Gemm']
    """

    op: str = ""

    def __init__(self) -> None:
        #: Learned tensors by name, in the order the ONNX node takes them after the data input.
        self.params: dict[str, np.ndarray] = {}

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, by name.

        Examples
        --------
        >>> {name: a.shape for name, a in Dense(3, 2).state().items()}
        {'weight': (2, 3), 'bias': (2,)}
        """
        return {k: v.copy() for k, v in self.params.items()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Replace the parameters (same names and shapes; cast to float32).

        Raises
        ------
        InputError
            A name is missing or unexpected.
        ShapeError
            An array's shape differs from the parameter's.

        Examples
        --------
        >>> import numpy as np
        >>> layer = Dense(3, 2)
        >>> layer.load_state({"weight": np.ones((2, 3)), "bias": np.zeros(2)})
        >>> layer.params["weight"].dtype
        dtype('float32')
        >>> layer.load_state({"weight": np.ones((3, 2)), "bias": np.zeros(2)})
        Traceback (most recent call last):
        ...
        taskflow.errors.ShapeError: Dense(3, 2): state 'weight' has shape (3, 2); expected (2, 3)
        """
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise InputError(f"{self!r}: state is missing {missing} and has unexpected {extra}; "
                             f"expected exactly {list(self.params)}")
        new = {}
        for k, old in self.params.items():
            a = np.asarray(state[k], dtype=np.float32)
            if a.shape != old.shape:
                raise ShapeError(f"{self!r}: state {k!r} has shape {a.shape}; "
                                 f"expected {old.shape}")
            new[k] = np.ascontiguousarray(a).copy()
        self.params = new

    def output_shape(self, shape: Shape) -> Shape:
        """Shape of the output for an input of ``shape`` (raises ShapeError if it does not fit).

        Examples
        --------
        >>> Conv2d(3, 16, 3, stride=2, padding=1).output_shape(("N", 3, 32, 32))
        ('N', 16, 16, 16)
        """
        return shape

    def attrs(self) -> dict[str, Any]:
        return {}

    def constants(self) -> dict[str, np.ndarray]:
        """Non-learned input tensors of the node (not part of :meth:`state`)."""
        return {}

    def _expect(self, shape: Shape, rank: int, axis: int, size: int, what: str) -> None:
        if len(shape) != rank or shape[axis] != size:
            raise ShapeError(f"{self!r} expects {what}; got input of shape {_fmt(shape)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.attrs().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer ``y = x @ weight.T + bias`` (ONNX ``Gemm``, ``transB=1``).

    Examples
    --------
    >>> Dense(128, 10).params["weight"].shape
    (10, 128)
    """

    op = "Gemm"

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 seed: int | np.random.Generator | None = 0) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        rng = np.random.default_rng(seed)
        self.params["weight"] = _he_uniform(rng, (self.out_features, self.in_features),
                                            self.in_features)
        if bias:
            self.params["bias"] = np.zeros(self.out_features, np.float32)

    def output_shape(self, shape: Shape) -> Shape:
        self._expect(shape, 2, 1, self.in_features, f"(N, {self.in_features})")
        return (shape[0], self.out_features)

    def attrs(self) -> dict[str, Any]:
        return {"transB": 1}

    def __repr__(self) -> str:
        return f"Dense({self.in_features}, {self.out_features})"


class Conv2d(Layer):
    """2-D convolution over ``(N, C, H, W)`` (ONNX ``Conv``), weight ``(out, in/groups, kh, kw)``.

    Examples
    --------
    >>> Conv2d(1, 16, 3, padding=1).output_shape(("N", 1, 8, 8))
    ('N', 16, 8, 8)
    """

    op = "Conv"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair = 1,
                 padding: Pair = 0, dilation: Pair = 1, groups: int = 1, bias: bool = True, *,
                 seed: int | np.random.Generator | None = 0) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"Conv2d: groups={groups!r} must divide in_channels={in_channels!r} "
                             f"and out_channels={out_channels!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        fan_in = in_channels // groups * self.kernel[0] * self.kernel[1]
        rng = np.random.default_rng(seed)
        self.params["weight"] = _he_uniform(
            rng, (out_channels, in_channels // groups, *self.kernel), fan_in)
        if bias:
            self.params["bias"] = np.zeros(out_channels, np.float32)

    def output_shape(self, shape: Shape) -> Shape:
        self._expect(shape, 4, 1, self.in_channels, f"(N, {self.in_channels}, H, W)")
        return (shape[0], self.out_channels,
                *_window_out(self, shape[2:], self.kernel, self.stride, self.padding,
                             self.dilation))

    def attrs(self) -> dict[str, Any]:
        return {"kernel_shape": list(self.kernel), "strides": list(self.stride),
                "pads": list(self.padding) * 2, "dilations": list(self.dilation),
                "group": self.groups}

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels}, {self.out_channels}, {self.kernel}, "
                f"stride={self.stride}, padding={self.padding})")


def _window_out(layer: Layer, spatial: Sequence[Any], k: tuple[int, int], s: tuple[int, int],
                p: tuple[int, int], d: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    out = tuple((n + 2 * p_ - d_ * (k_ - 1) - 1) // s_ + 1
                for n, k_, s_, p_, d_ in zip(spatial, k, s, p, d))
    if min(out) < 1:
        raise ShapeError(f"{layer!r}: a {spatial[0]}x{spatial[1]} input is smaller than the "
                         f"window; output would be {out[0]}x{out[1]}")
    return out


class MaxPool2d(Layer):
    """Max over ``k x k`` windows (ONNX ``MaxPool``); ``stride`` defaults to ``k``.

    Examples
    --------
    >>> MaxPool2d(2).output_shape(("N", 16, 8, 8))
    ('N', 16, 4, 4)
    """

    op = "MaxPool"

    def __init__(self, kernel_size: Pair, stride: Pair | None = None, padding: Pair = 0) -> None:
        super().__init__()
        self.kernel = _pair(kernel_size)
        self.stride = self.kernel if stride is None else _pair(stride)
        self.padding = _pair(padding)

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 4:
            raise ShapeError(f"{self!r} expects (N, C, H, W); got input of shape {_fmt(shape)}")
        return (*shape[:2], *_window_out(self, shape[2:], self.kernel, self.stride, self.padding))

    def attrs(self) -> dict[str, Any]:
        return {"kernel_shape": list(self.kernel), "strides": list(self.stride),
                "pads": list(self.padding) * 2}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kernel}, stride={self.stride})"


class AvgPool2d(MaxPool2d):
    """Mean over ``k x k`` windows (ONNX ``AveragePool``); padding is excluded from the mean
    unless ``count_include_pad`` (PyTorch's default is to include it).

    Examples
    --------
    >>> AvgPool2d(2, stride=1).output_shape(("N", 3, 5, 5))
    ('N', 3, 4, 4)
    """

    op = "AveragePool"

    def __init__(self, kernel_size: Pair, stride: Pair | None = None, padding: Pair = 0,
                 count_include_pad: bool = False) -> None:
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def attrs(self) -> dict[str, Any]:
        return {**super().attrs(), "count_include_pad": int(self.count_include_pad)}


class GlobalAvgPool2d(Layer):
    """Mean over all spatial positions: ``(N, C, H, W) -> (N, C, 1, 1)``.

    Examples
    --------
    >>> GlobalAvgPool2d().output_shape(("N", 32, 7, 7))
    ('N', 32, 1, 1)
    """

    op = "GlobalAveragePool"

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 4:
            raise ShapeError(f"{self!r} expects (N, C, H, W); got input of shape {_fmt(shape)}")
        return (*shape[:2], 1, 1)


class BatchNorm2d(Layer):
    """Inference batch norm ``weight * (x - running_mean) / sqrt(running_var + eps) + bias``.

    Examples
    --------
    >>> sorted(BatchNorm2d(16).state())
    ['bias', 'running_mean', 'running_var', 'weight']
    """

    op = "BatchNormalization"

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        c = self.num_features
        self.params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32),
                       "running_mean": np.zeros(c, np.float32),
                       "running_var": np.ones(c, np.float32)}

    def output_shape(self, shape: Shape) -> Shape:
        self._expect(shape, 4, 1, self.num_features, f"(N, {self.num_features}, H, W)")
        return shape

    def attrs(self) -> dict[str, Any]:
        return {"epsilon": self.eps}

    def __repr__(self) -> str:
        return f"BatchNorm2d({self.num_features})"


class LayerNorm(Layer):
    """Normalise over the last axis, then scale by ``weight`` and shift by ``bias``.

    Examples
    --------
    >>> LayerNorm(64).output_shape(("N", 64))
    ('N', 64)
    """

    op = "LayerNormalization"

    def __init__(self, normalized_shape: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim, self.eps = int(normalized_shape), float(eps)
        self.params = {"weight": np.ones(self.dim, np.float32),
                       "bias": np.zeros(self.dim, np.float32)}

    def output_shape(self, shape: Shape) -> Shape:
        self._expect(shape, len(shape), -1, self.dim, f"(..., {self.dim})")
        return shape

    def attrs(self) -> dict[str, Any]:
        return {"axis": -1, "epsilon": self.eps}

    def __repr__(self) -> str:
        return f"LayerNorm({self.dim})"


class ReLU(Layer):
    """``max(x, 0)``.

    Examples
    --------
    >>> ReLU().op
    'Relu'
    """

    op = "Relu"


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``.

    Examples
    --------
    >>> Sigmoid().op
    'Sigmoid'
    """

    op = "Sigmoid"


class Tanh(Layer):
    """``tanh(x)``.

    Examples
    --------
    >>> Tanh().op
    'Tanh'
    """

    op = "Tanh"


class LeakyReLU(Layer):
    """``x if x >= 0 else negative_slope * x``.

    Examples
    --------
    >>> LeakyReLU(0.1).attrs()
    {'alpha': 0.1}
    """

    op = "LeakyRelu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.alpha = float(negative_slope)

    def attrs(self) -> dict[str, Any]:
        return {"alpha": self.alpha}


class GELU(Layer):
    """``x * Phi(x)`` (``approximate="tanh"`` for the tanh form).

    Examples
    --------
    >>> GELU().attrs()
    {'approximate': 'none'}
    """

    op = "Gelu"

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def attrs(self) -> dict[str, Any]:
        return {"approximate": self.approximate}


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` along ``axis``.

    Examples
    --------
    >>> Softmax().attrs()
    {'axis': -1}
    """

    op = "Softmax"

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)

    def attrs(self) -> dict[str, Any]:
        return {"axis": self.axis}


class Flatten(Layer):
    """``(N, d1, d2, ...) -> (N, d1 * d2 * ...)``.

    Examples
    --------
    >>> Flatten().output_shape(("N", 32, 2, 2))
    ('N', 128)
    """

    op = "Flatten"

    def output_shape(self, shape: Shape) -> Shape:
        rest = shape[1:]
        return (shape[0], math.prod(rest) if all(isinstance(d, int) for d in rest) else None)

    def attrs(self) -> dict[str, Any]:
        return {"axis": 1}


class Dropout(Layer):
    """Identity at inference; ``p`` is kept as the node's ``ratio`` input.

    Examples
    --------
    >>> Dropout(0.25).constants()["ratio"]
    array(0.25, dtype=float32)
    """

    op = "Dropout"

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = float(p)

    def constants(self) -> dict[str, np.ndarray]:
        return {"ratio": np.array(self.p, np.float32)}

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


class Sequential:
    """A chain of layers with one input ``"input"`` of shape ``(N, *input_shape)``.

    Parameters
    ----------
    layers : sequence of Layer
        Applied in order.
    input_shape : tuple of int
        One sample's shape, ``(C, H, W)`` or ``(features,)``; the batch ``N`` is symbolic.
    name : str
        The graph's (and the ONNX model's) name.

    Raises
    ------
    ShapeError
        A layer cannot take what the previous layer (or the input) produces.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> net = nn.Sequential([nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    ...                      nn.Flatten(), nn.Dense(64, 10)], input_shape=(1, 8, 8))
    >>> net.output_shape
    ('N', 10)
    >>> sorted(net.state())[:2]
    ['0.bias', '0.weight']
    >>> model = net.to_model()                                  # a taskflow.Model
    >>> model.save("tiny.onnx")                                 # doctest: +SKIP
    """

    def __init__(self, layers: Sequence[Layer], *, input_shape: Sequence[int],
                 name: str = "sequential") -> None:
        self.layers = list(layers)
        if not self.layers:
            raise GraphError(f"Sequential {name!r} has no layers; pass at least one")
        self.input_shape: Shape = (BATCH, *(int(d) for d in input_shape))
        self.name = name
        self.shapes = self._infer_shapes()

    def _infer_shapes(self) -> list[Shape]:
        shapes, shape = [], self.input_shape
        for k, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ShapeError as exc:
                src = "input 'input'" if k == 0 else f"layer {k - 1} ({self.layers[k - 1]!r})"
                raise ShapeError(f"Sequential {self.name!r}: layer {k} does not fit the "
                                 f"output of {src}: {exc}") from exc
            shapes.append(shape)
        return shapes

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1]

    def state(self) -> dict[str, np.ndarray]:
        """All parameters as ``{"<layer index>.<name>": array}`` (PyTorch's naming).

        Examples
        --------
        >>> net = Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], input_shape=(4,))
        >>> list(net.state())
        ['0.weight', '0.bias', '2.weight', '2.bias']
        """
        return {f"{k}.{n}": a for k, layer in enumerate(self.layers)
                for n, a in layer.state().items()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Load ``{"<layer index>.<name>": array}``, e.g. a PyTorch ``state_dict()`` as numpy.

        Raises
        ------
        InputError
            A key names no parameter, or a parameter is missing.

        Examples
        --------
        Weights trained in PyTorch, for the same architecture:

        >>> net = Sequential([Dense(4, 8), ReLU(), Dense(8, 3)], input_shape=(4,))
        >>> torch_net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                                 torch.nn.Linear(8, 3))      # doctest: +SKIP
        >>> net.load_state({k: v.detach().numpy()
        ...                 for k, v in torch_net.state_dict().items()})  # doctest: +SKIP

        Or a copy of another network's state:

        >>> twin = Sequential([Dense(4, 8, seed=1), ReLU(), Dense(8, 3, seed=1)],
        ...                   input_shape=(4,))
        >>> twin.load_state(net.state())
        >>> bool((twin[0].params["weight"] == net[0].params["weight"]).all())
        True
        """
        per_layer: list[dict[str, Any]] = [{} for _ in self.layers]
        for key, value in state.items():
            idx, _, pname = key.partition(".")
            if not idx.isdigit() or int(idx) >= len(self.layers):
                raise InputError(f"state key {key!r} names no layer; keys look like '0.weight' "
                                 f"for layers 0..{len(self.layers) - 1}")
            per_layer[int(idx)][pname] = value
        for k, (layer, sub) in enumerate(zip(self.layers, per_layer)):
            if sub or layer.params:
                try:
                    layer.load_state(sub)
                except (InputError, ShapeError) as exc:
                    raise type(exc)(f"layer {k}: {exc}") from exc

    def to_graph(self) -> Graph:
        """The network as a :class:`~taskflow.ir.graph.Graph` (input ``"input"``, output
        ``"output"``, float32).

        Examples
        --------
        >>> g = Sequential([Dense(4, 3), Softmax()], input_shape=(4,)).to_graph()
        >>> for node in g.nodes:
        ...     print(node)
        Node(Gemm, '0_Gemm', ['input', '0.weight', '0.bias'] -> ['0_gemm'])
        Node(Softmax, '1_Softmax', ['0_gemm'] -> ['output'])
        """
        f32 = np.dtype(np.float32)
        g = Graph(name=self.name, inputs=[Value("input", f32, self.input_shape)])
        x = "input"
        for k, (layer, shape) in enumerate(zip(self.layers, self.shapes)):
            inputs = [x]
            for pname, arr in {**layer.params, **layer.constants()}.items():
                g.initializers[f"{k}.{pname}"] = arr
                inputs.append(f"{k}.{pname}")
            y = "output" if k == len(self.layers) - 1 else f"{k}_{layer.op.lower()}"
            g.nodes.append(Node(layer.op, inputs, [y], layer.attrs(), name=f"{k}_{layer.op}"))
            g.values[y] = Value(y, f32, shape)
            x = y
        g.outputs = [Value("output", f32, self.output_shape)]
        g.validate()
        return g

    def to_model(self, **kw: Any) -> Model:
        """A :class:`taskflow.Model` of this network; ``kw`` goes to ``Model`` (``device``...).

        Examples
        --------
        >>> import numpy as np
        >>> model = Sequential([Dense(4, 3)], input_shape=(4,)).to_model(device="reference")
        >>> model.run(None, {"input": np.zeros((5, 4), np.float32)})[0].shape
        (5, 3)
        """
        from taskflow.model import Model

        return Model(self.to_graph(), **kw)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, k: int) -> Layer:
        return self.layers[k]

    def __repr__(self) -> str:
        rows = [f"  ({k}) {layer!r} -> {_fmt(s)}" for k, (layer, s) in
                enumerate(zip(self.layers, self.shapes))]
        return f"Sequential({self.name!r}, input {_fmt(self.input_shape)}\n" + "\n".join(rows) \
            + "\n)"
