"""``Model``: a loaded graph with ONNX Runtime's calling convention.

``Model.run(output_names, input_feed)`` behaves like ``onnxruntime.InferenceSession.run``;
``get_inputs()`` / ``get_outputs()`` return objects with ``name``, ``shape`` and ``type``.

Over 600 lines on purpose: ``Model`` is the public face users read, and its methods that
transform a model (``prune``, ``with_precision``, ``quantize``) are thin delegations to
:mod:`taskflow.ir.prune` and :mod:`taskflow.precision` whose length is their numpydoc
documentation; the device handling (a plan per device, host/device copies at the graph's
edges) is a few lines over :mod:`taskflow.ops.device`. Splitting the class over modules
would scatter its reference, not its logic.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.errors import DTypeError, InputError
from taskflow.executor import ExecutionPlan, dummy_feed, sample_array
from taskflow.ir.graph import Graph, Node, Value
from taskflow.ops.device import (
    array_module,
    is_device_array,
    is_gpu,
    resolve_device,
    to_device,
    to_host,
    use_device,
)


@dataclass(frozen=True)
class NodeArg:
    """A model input or output, as ONNX Runtime describes it.

    Attributes
    ----------
    name : str
        The value's name, the key of ``input_feed`` in :meth:`Model.run`.
    shape : list of int, str or None
        Static sizes, symbolic names (the batch ``"N"``) or None where unknown.
    type : str
        ONNX Runtime's type string, e.g. ``"tensor(float)"``.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> model.get_inputs()[0]
    NodeArg(name='input', shape=['N', 4], type='tensor(float)')
    """

    name: str
    shape: list[int | str | None]
    type: str


def _type_string(dtype: np.dtype | None) -> str:
    if dtype is None:
        return "tensor(unknown)"
    from onnx import helper

    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    name = helper.tensor_dtype_to_string(elem).removeprefix("TensorProto.").lower()
    return f"tensor({name})"


@dataclass
class ModelInfo:
    """What ``taskflow info`` prints: op counts, parameters, FLOPs, notes.

    Returned by :meth:`Model.info`; ``str(info)`` is the ``taskflow info`` text.

    Attributes
    ----------
    name : str
        The graph's name.
    inputs, outputs : list of Value
        The model's interface, with dtypes and (symbolic) shapes.
    op_counts : dict of str to int
        Nodes per op type, after optimisation.
    parameters : int
        Elements in all initializers (weights).
    flops_per_sample : int
        FLOPs of one sample (batch 1), summed over the ops' FLOP counts.
    notes : list of str
        What the importer changed, e.g. a batch dimension made symbolic.
    flops_by_op : dict of str to int
        ``flops_per_sample`` by op type, largest first.
    optimized : str
        ``"<before> -> <after> nodes (...)"`` when the graph was optimised, else ``""``.
    dims : dict of str to int
        The size each symbolic input dim was traced at (the batch dim: 1).
    assumed : list of str
        The symbolic dims nobody gave a size, traced at 1: FLOPs that grow with them (a
        sequence length) are then those of length 1.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> net = nn.Sequential([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 3)], input_shape=(4,))
    >>> info = net.to_model().info()
    >>> info.parameters, info.flops_per_sample
    (67, 131)
    >>> print(info)                                             # doctest: +ELLIPSIS
    model     sequential
    input     Value('input', float32, (N, 4))
    output    Value('output', float32, (N, 3))
    ...
    """

    name: str
    inputs: list[Value]
    outputs: list[Value]
    op_counts: dict[str, int]
    parameters: int
    flops_per_sample: int
    notes: list[str] = field(default_factory=list)
    flops_by_op: dict[str, int] = field(default_factory=dict)
    #: "<before> -> <after> nodes (...)" when the graph was optimised, else "".
    optimized: str = ""
    dims: dict[str, int] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"model     {self.name}"]
        lines += [f"input     {v!r}" for v in self.inputs]
        lines += [f"output    {v!r}" for v in self.outputs]
        lines.append(f"nodes     {sum(self.op_counts.values())}"
                     + (f" (optimised: {self.optimized})" if self.optimized else ""))
        lines.append(f"params    {self.parameters:,}")
        lines.append(f"FLOPs     {_si(self.flops_per_sample)}FLOP per sample")
        if self.dims:
            lines.append("dims      " + ", ".join(f"{k}={v}" for k, v in self.dims.items()))
        if self.assumed:
            lines.append(f"assumed   {', '.join(f'{d}=1' for d in self.assumed)} for the FLOPs "
                         f"(give sizes with --dim {self.assumed[0]}=128, or "
                         f"Model.info(dims={{{self.assumed[0]!r}: 128}}))")
        lines.append("ops       " + ", ".join(f"{k} x{v}" for k, v in self.op_counts.items()))
        lines.append("supported all ops")
        lines += [f"note      {n}" for n in self.notes]
        return "\n".join(lines)


def _dim_name(v: Value, axis: int) -> str:
    """The name of symbolic dim ``axis`` of input ``v`` (an unnamed one: ``<input>[axis]``)."""
    d = v.shape[axis]
    return d if isinstance(d, str) and d else f"{v.name}[{axis}]"


def _si(n: float) -> str:
    """``12.3 M`` style: FLOP counts span 1e3 (tiny MLPs) to 1e10 (VGG-19)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} "


class Model:
    """A neural network ready to run in-process (and, later, on a Dask cluster).

    Parameters
    ----------
    graph : Graph
        Canonical-form graph (from :func:`taskflow.load` or :mod:`taskflow.frontend.nn`).
    device : {"cpu", "gpu", "cuda", "cuda:N", "auto", "reference"}
        Kernels to run with (checked first: :func:`taskflow.ops.parse_device`). ``"gpu"``
        (``"cuda"``, ``"cuda:N"``) runs the CuPy kernels and needs CuPy and a CUDA device;
        ``"auto"`` takes the gpu where there is one, else the cpu; ``"reference"`` runs the
        numpy definitions.
    strict : bool or None
        With a gpu, refuse ops that have no gpu kernel (one :class:`UnsupportedOpError` naming
        them all) instead of running their numpy reference on the host. None (the default):
        True for a gpu; the cpu always has a kernel (its reference, where there is no other).
    optimize : bool
        Run the graph passes (constant and BatchNorm folding, Dropout/Identity removal,
        op+bias+activation fusion, dead-node elimination) first, like ONNX Runtime's default
        level. ``graph`` keeps the optimised graph, ``source_graph`` the one given.

    Attributes
    ----------
    graph : Graph
        The graph that runs (optimised unless ``optimize=False``).
    source_graph : Graph
        The graph as given; :meth:`save` writes this one.

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> model = tf.load("resnet50.onnx")                        # doctest: +SKIP
    >>> probs = model.run(None, {"data": x})[0]                 # doctest: +SKIP

    A model built in Python, run on the numpy reference kernels:

    >>> from taskflow import Model
    >>> from taskflow.frontend import nn
    >>> graph = nn.Sequential([nn.Dense(4, 3), nn.Softmax()], input_shape=(4,)).to_graph()
    >>> Model(graph, device="reference")
    Model('sequential', inputs=['input'], outputs=['output'], nodes=2)
    """

    def __init__(self, graph: Graph, *, device: str = "cpu", strict: bool | None = None,
                 optimize: bool = True):
        device = resolve_device(device)  # a bad name or a missing gpu, before any work
        graph.validate()
        self.source_graph = graph
        self.optimize_report = None
        if optimize:
            from taskflow.ir.optimize import optimize as run_passes

            graph, self.optimize_report = run_passes(graph)
        self.graph = graph
        self.device = device
        self._strict_given = strict
        self.strict = _strict(device, strict)
        self._plan = ExecutionPlan(graph, device=device, strict=self.strict)
        self._plans = {device: self._plan}  # run(device=...) adds the others on first use

    # --- ONNX Runtime compatible surface ---------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        """The model's inputs (name, shape, type), like ``InferenceSession.get_inputs()``.

        Examples
        --------
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
        >>> [(i.name, i.shape, i.type) for i in model.get_inputs()]
        [('input', ['N', 4], 'tensor(float)')]
        """
        return [NodeArg(v.name, list(v.shape or []), _type_string(v.dtype))
                for v in self.graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        """The model's outputs (name, shape, type), like ``InferenceSession.get_outputs()``.

        Examples
        --------
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
        >>> model.get_outputs()[0].shape
        ['N', 3]
        """
        return [NodeArg(v.name, list(v.shape or []), _type_string(v.dtype))
                for v in self.graph.outputs]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None, *, device: str | None = None) -> list[Any]:
        """Compute ``output_names`` (all outputs if None) from ``input_feed``.

        The signature of ``onnxruntime.InferenceSession.run``, so code written for ONNX Runtime
        runs unchanged.

        On a gpu, numpy inputs are copied to the device once, at the graph's inputs, and the
        outputs copied back: numpy in, numpy out. CuPy inputs stay where they are and the
        outputs are CuPy arrays.

        Parameters
        ----------
        output_names : list of str or None
            Outputs to compute, in the order returned; None: all, in the model's order.
        input_feed : dict of str to array
            One array per model input, by name; dtypes must match exactly (no silent casts).
        run_options : optional
            Accepted for compatibility with ONNX Runtime and ignored.
        device : str, optional
            Run on this device instead of the model's (``"gpu"``, ``"cpu"``...); its kernels
            are resolved on first use and kept.

        Returns
        -------
        list of numpy.ndarray or cupy.ndarray
            One array per requested output (C-ordered); CuPy arrays where the inputs were.

        Raises
        ------
        InputError
            A missing, unexpected or wrongly shaped input, or an unknown output name.
        DTypeError
            An input of the wrong dtype (no silent casts, like ONNX Runtime).

        Examples
        --------
        >>> import numpy as np
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 3), nn.Softmax()], input_shape=(4,)).to_model()
        >>> probs = model.run(None, {"input": np.ones((2, 4), np.float32)})[0]
        >>> probs.shape, bool(np.allclose(probs.sum(axis=1), 1))
        ((2, 3), True)
        >>> model.run(["output"], {"input": np.ones((2, 4))})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        taskflow.errors.DTypeError: input 'input' has dtype float64; the model expects float32 ...
        """
        feed = self.check_feed(input_feed)
        wanted = list(output_names) if output_names else self.graph.output_names
        known = set(self.graph.output_names)
        bad = [n for n in wanted if n not in known]
        if bad:
            raise InputError(
                f"unknown output name(s) {bad}; the model's outputs are {sorted(known)}"
            )
        plan = self._plan if device is None else self._plan_for(device)
        if is_gpu(plan.device):
            return _run_on_gpu(plan, feed, wanted)
        values = plan.run(feed, wanted)
        # C order, as ONNX Runtime returns: cpu kernels may hand on channels-last views
        return [np.asarray(values[n], order="C") for n in wanted]

    def _plan_for(self, device: str) -> ExecutionPlan:
        name = resolve_device(device)
        if name not in self._plans:
            self._plans[name] = ExecutionPlan(self.graph, device=name,
                                              strict=_strict(name, self._strict_given))
        return self._plans[name]

    def check_feed(self, input_feed: Mapping[str, Any]) -> dict[str, Any]:
        """Validate names, dtypes and shapes of a feed (symbolic dims must agree across inputs).

        :meth:`run` calls it first; call it yourself to check a feed without running.

        Returns
        -------
        dict
            The feed, non-array values converted with ``numpy.asarray``.

        Raises
        ------
        InputError
            A missing or unexpected input, or a shape the model cannot take.
        DTypeError
            An input of the wrong dtype.

        Examples
        --------
        >>> import numpy as np
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
        >>> list(model.check_feed({"input": np.ones((8, 4), np.float32)}))
        ['input']
        >>> model.check_feed({"input": np.ones((8, 5), np.float32)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        taskflow.errors.InputError: input 'input' has shape (8, 5); the model expects (N, 4) ...
        """
        expected = {v.name: v for v in self.graph.inputs}
        missing = [n for n in expected if n not in input_feed]
        extra = [n for n in input_feed if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise InputError(
                "; ".join(parts) + f"; the model's inputs are {list(expected)}"
            )
        feed: dict[str, Any] = {}
        bound: dict[str, tuple[int, str]] = {}
        for name, v in expected.items():
            x = input_feed[name]
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                x = np.asarray(x)
            if v.dtype is not None and x.dtype != v.dtype:
                raise DTypeError(
                    f"input {name!r} has dtype {x.dtype.name}; the model expects "
                    f"{v.dtype.name} (cast it with x.astype(np.{v.dtype.name}))"
                )
            if v.shape is not None:
                self._check_shape(name, v, tuple(x.shape), bound)
            feed[name] = x
        return feed

    @staticmethod
    def _check_shape(name: str, v: Value, found: tuple[int, ...],
                     bound: dict[str, tuple[int, str]]) -> None:
        expect = "(" + ", ".join("?" if d is None else str(d) for d in v.shape) + ")"
        if len(found) != len(v.shape):
            raise InputError(
                f"input {name!r} has shape {found} (rank {len(found)}); the model expects "
                f"{expect} (rank {len(v.shape)})"
            )
        for axis, (d, f) in enumerate(zip(v.shape, found)):
            if isinstance(d, int) and d != f:
                raise InputError(
                    f"input {name!r} has shape {found}; the model expects {expect} "
                    f"(axis {axis} must be {d})"
                )
            if isinstance(d, str):
                if d in bound and bound[d][0] != f:
                    size, other = bound[d]
                    raise InputError(
                        f"input {name!r} has {d}={f} at axis {axis}, but input {other!r} "
                        f"has {d}={size}; dimension {d!r} must agree across inputs"
                    )
                bound.setdefault(d, (f, name))

    # --- description -----------------------------------------------------------------------------
    def info(self, dims: Mapping[str, int] | None = None) -> ModelInfo:
        """Op counts, parameter count and FLOPs per sample (traced on one zero sample).

        Parameters
        ----------
        dims : dict of str to int, optional
            Sizes of symbolic input dims other than the batch (``{"seq": 128}``). Dims not
            given are traced at 1 and listed in ``ModelInfo.assumed``.

        Raises
        ------
        InputError
            ``dims`` names a dim no input has.

        Returns
        -------
        ModelInfo
            Printed as ``taskflow info MODEL`` prints it.

        Examples
        --------
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 8), nn.ReLU(), nn.Dense(8, 3)],
        ...                       input_shape=(4,)).to_model()
        >>> info = model.info()
        >>> info.op_counts, info.parameters
        ({'FusedGemm': 1, 'Gemm': 1}, 67)
        >>> info.optimized
        '3 -> 2 nodes (fuse_epilogues -1)'
        """
        flops_by_op: dict[str, int] = {}

        def trace(node: Node, args: list[Any], results: tuple) -> None:
            spec = ops.get(node.op)
            in_shapes = [tuple(a.shape) if a is not None else () for a in args]
            out_shapes = [tuple(r.shape) for r in results if r is not None]
            flops_by_op[node.op] = flops_by_op.get(node.op, 0) + int(
                spec.flops(in_shapes, out_shapes, **node.attrs)
            )

        sizes, assumed = self._trace_dims(dims or {})
        feed = {v.name: sample_array(v.name, [d if isinstance(d, int) else sizes[_dim_name(v, k)]
                                              for k, d in enumerate(v.shape)], v.dtype)
                for v in self.graph.inputs if v.shape is not None}
        if len(feed) < len(self.graph.inputs):
            feed = dummy_feed(self.graph, batch=1)  # raises, naming the input of no rank
        with use_device(self.device):
            self._plan.run(feed, trace=trace)
        batch = max((sizes[_dim_name(v, 0)] for v in self.graph.inputs
                     if v.shape and not isinstance(v.shape[0], int)), default=1)
        flops_by_op = {k: f // batch for k, f in flops_by_op.items()}
        return ModelInfo(
            name=self.graph.name,
            inputs=list(self.graph.inputs),
            outputs=list(self.graph.outputs),
            op_counts=self.graph.op_counts(),
            parameters=self.graph.parameter_count(),
            flops_per_sample=sum(flops_by_op.values()),
            notes=list(self.graph.notes),
            flops_by_op=dict(sorted(flops_by_op.items(), key=lambda kv: -kv[1])),
            optimized=str(self.optimize_report) if self.optimize_report else "",
            dims=sizes,
            assumed=assumed,
        )

    def _trace_dims(self, given: Mapping[str, int]) -> tuple[dict[str, int], list[str]]:
        """Sizes of the symbolic input dims for :meth:`info`: ``given``, 1 for a batch dim
        (dim 0), else 1 and listed as assumed."""
        names: dict[str, bool] = {}  # name -> is a batch dim
        for v in self.graph.inputs:
            for k, d in enumerate(v.shape or ()):
                if not isinstance(d, int):
                    name = _dim_name(v, k)
                    names[name] = names.get(name, False) or k == 0
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise InputError(f"dim(s) {unknown} given, but the model's symbolic input dims are "
                             f"{sorted(names) or 'none'}; name one of those (e.g. --dim "
                             f"{next(iter(names), 'seq')}=128)")
        sizes = {n: int(given.get(n, 1)) for n in names}
        assumed = [n for n, batch in names.items() if not batch and n not in given]
        return sizes, assumed

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as an ONNX file (loadable by taskflow and ONNX Runtime).

        The graph written is the one given (:attr:`source_graph`), before optimisation: fused
        taskflow-only ops would not load elsewhere.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.onnx`` file to write.

        Examples
        --------
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
        >>> model.save("dense.onnx")                                # doctest: +SKIP
        >>> import onnxruntime as ort                               # doctest: +SKIP
        >>> ort.InferenceSession("dense.onnx").get_inputs()[0].shape  # doctest: +SKIP
        ['N', 4]
        """
        import onnx

        from taskflow.frontend.onnx_export import to_onnx

        # The source graph: fused taskflow-domain ops would not load in other runtimes.
        onnx.save(to_onnx(self.source_graph), os.fspath(path))

    def prune(self, sparsity: float, structured: bool = True, *, sample: Any = None) -> Model:
        """A new model with the smallest-magnitude weights removed (this one is untouched).

        Structured pruning removes whole output channels (smallest L1 norm) of each Conv,
        Gemm or MatMul whose output reaches exactly one other contraction through channel-wise
        ops only, with the matching bias, BatchNorm parameters and the next layer's input
        channels: the dense model shrinks and runs faster on the ordinary kernels. Layers
        feeding a graph output, a residual Add, a Concat or a Reshape are skipped (listed in
        the report with the reason). Unstructured pruning zeroes the smallest weights of each
        Conv/Gemm/MatMul weight tensor; then every Gemm, MatMul (2-D constant weight) and 1x1
        convolution (stride 1, no padding, one group) whose weight is at least half zeros has
        its sparse kernel (the weight's non-zeros in CSR, :mod:`taskflow.ops.cpu.sparse`)
        timed against its dense one on the layer's own inputs (the model run once on
        ``sample``), and runs it only where it is more than 3% faster (typically from about
        90% sparsity on wide layers; at 50% the dense GEMM wins). :meth:`save` writes the
        pruned dense graph (standard ONNX; ``source_graph``); the choice is how this process
        runs it. No fine-tuning follows, so accuracy drops; measure it.

        Parameters
        ----------
        sparsity : float
            In [0, 1): fraction of each layer's channels (or of each weight's elements) removed;
            structured pruning keeps at least one channel per layer.
        structured : bool
            Whole channels (True) or single weights (False).
        sample : array or dict of str to array, optional
            Unstructured only: the batch the layers are timed on (default: 8 rows of random
            normal data at the input shapes); its size matters, so give one like those the
            model will see.

        Returns
        -------
        Model
            The pruned model, with the :class:`taskflow.ir.prune.PruneReport` as
            ``prune_report`` (per-layer channels kept, skipped layers, parameters; after
            unstructured pruning each layer's sparsity, dense and sparse time and the kernel
            chosen, as :class:`taskflow.ir.prune.SparseChoice` in ``kernels``).

        Raises
        ------
        InputError
            ``sparsity`` outside [0, 1).

        Examples
        --------
        >>> from taskflow.frontend import nn
        >>> model = nn.Sequential([nn.Dense(8, 6), nn.ReLU(), nn.Dense(6, 2)],
        ...                       input_shape=(8,)).to_model()
        >>> pruned = model.prune(0.5)
        >>> pruned.prune_report.params_before, pruned.prune_report.params_after
        (68, 35)
        >>> sparse = model.prune(0.9, structured=False)
        >>> [c.kernel in ("sparse", "dense") for c in sparse.prune_report.kernels]
        [True, True]
        """
        from taskflow.ir.prune import prune

        graph, report = prune(self.source_graph, sparsity, structured=structured)
        model = Model(graph, device=self.device, strict=self.strict,
                      optimize=self.optimize_report is not None)
        if not structured:
            from taskflow.ops.cpu.sparse import sparse_backend
            from taskflow.precision.sparse import choose_sparse_kernels

            model, report.kernels = choose_sparse_kernels(model, sample)
            report.notes.append(f"sparse kernels: {sparse_backend()}, kept where measured "
                                "faster; save() writes the pruned dense graph")
        model.prune_report = report
        return model

    def with_precision(self, precision: str = "bf16", *, choose: str = "measure",
                       sample: Any = None) -> Model:
        """A new model whose convolutions and matrix products run in bf16 or int8 where that
        is faster here (this one is untouched).

        Every Conv, Gemm and MatMul with a constant weight is a candidate. With
        ``choose="measure"`` each candidate's reduced kernel is timed against its fp32 kernel
        on the layer's own inputs (the model run once on ``sample``) and kept only where it
        is faster: on a CPU without bf16/int8 matrix units (AVX2 only) most layers stay fp32;
        with AMX or VNNI most run reduced. ``choose="all"`` keeps every candidate reduced.
        ``"int8"`` here is dynamic int8 (each input's range measured per call, no
        calibration: see :meth:`quantize` for static int8). Weights stay fp32 in the graph;
        the kernels convert them once.

        :meth:`save` still writes the fp32 model (the source graph): bf16 and dynamic int8
        are how this process runs it, not a file format. ``quantize`` writes int8 files.

        Parameters
        ----------
        precision : {"bf16", "int8", "fp32"}
            The reduced precision; ``"fp32"`` drops any reduced layers.
        choose : {"measure", "all"}
            Keep the reduced kernel only where measured faster, or everywhere.
        sample : array or dict of str to array, optional
            The batch the layers are timed on (default: 8 rows of random normal data at the
            input shapes, other symbolic dims at the sizes :meth:`info` uses).

        Returns
        -------
        Model
            With ``precision_report``, a :class:`taskflow.precision.CompressionReport`: each
            candidate's :class:`~taskflow.precision.LayerChoice` (both timings, what runs).
            :func:`taskflow.precision.evaluate` adds accuracy and speed on held-out data.

        Raises
        ------
        InputError
            An unknown ``precision`` or ``choose``, or a ``sample`` that does not fit.

        Examples
        --------
        >>> import numpy as np
        >>> from taskflow.demo import load_digits_model
        >>> model = load_digits_model()
        >>> bf16 = model.with_precision("bf16", choose="all")
        >>> [layer.precision for layer in bf16.precision_report.layers]
        ['bf16', 'bf16', 'bf16', 'bf16']
        >>> x = np.random.default_rng(0).random((4, 1, 8, 8), np.float32)
        >>> bool(np.allclose(bf16.run(None, {"input": x})[0],
        ...                  model.run(None, {"input": x})[0], atol=0.02))
        True
        """
        from taskflow.precision import with_precision

        return with_precision(self, precision, choose=choose, sample=sample)

    def quantize(self, calibration: Any = None, *, mode: str = "static",
                 per_channel: bool = True, method: str = "minmax",
                 percentile: float = 99.999, client: Any = None, batch_size: int = 32,
                 input_name: str | None = None, choose: str = "measure",
                 sample: Any = None, reduce_range: bool | None = None) -> Model:
        """A new int8 model: ONNX QDQ form, calibrated on ``calibration`` (this one is
        untouched).

        Static (the default): the fp32 model runs over the calibration rows and records the
        range of the input of every Conv, Gemm and MatMul with a constant weight (min/max, a
        percentile or the entropy threshold); each such input is then quantised to u8 with
        that range, and each weight to int8 (symmetric, per output channel unless
        ``per_channel=False``). Dynamic: weights int8, each input's range measured per call
        (no calibration). The new model's optimiser fuses each quantised layer into an int8
        kernel; as in :meth:`with_precision` a layer whose int8 kernel is measured slower than
        fp32 here runs fp32 (``choose="all"``: none does).

        :meth:`save` writes the QDQ model (int8 weights: about 4x smaller, every layer
        quantised whatever ran here), which ONNX Runtime loads too. Large embedding tables
        (a ``Gather`` of a constant table) are stored in int8 per row as well; they run as
        their dequantised fp32 values.

        Parameters
        ----------
        calibration : array, dict of str to array, dask array, or str
            Representative rows (a few hundred are usually enough): one array for a one-input
            model, a dict by input name, a Dask array, or the path or URL of a Zarr array or
            group (read by the workers of a Dask cluster: ``client``, else a temporary local
            cluster; only statistics travel back). Not needed for ``mode="dynamic"``.
        mode : {"static", "dynamic"}
        per_channel : bool
            One weight scale per output channel (True) or per tensor.
        method : {"minmax", "percentile", "entropy"}
            How a range is chosen from the calibration statistics
            (:func:`taskflow.ir.calibrate.choose_ranges`).
        percentile : float
            For ``method="percentile"``.
        client : distributed.Client, optional
            The cluster a Dask array or Zarr store is calibrated on.
        batch_size : int
            Rows per model run (per task on a cluster).
        input_name : str, optional
            The input ``calibration`` feeds when it is one array (default: the only input).
        choose : {"measure", "all"}
            As in :meth:`with_precision`.
        sample : array or dict of str to array, optional
            The batch the layers are timed on with ``choose="measure"`` (as in
            :meth:`with_precision`): give one of the size the model will run at, since whether
            int8 pays depends on the GEMM sizes. Default: the first 8 calibration rows (static),
            else 8 rows of random normal data at the input shapes.
        reduce_range : bool, optional
            7-bit weights (in [-63, 63]; ONNX Runtime's quantiser has the same option). CPUs
            without VNNI (AVX2 only: most AMD before Zen 4, Intel before Cascade Lake)
            multiply uint8 by int8 in pairs summed in saturating int16, which 8-bit weights
            overflow: there int8 layers then run an exact but slow emulation. Default None:
            True exactly where this CPU needs it
            (:func:`taskflow.ops.cpu.lowp_engine.int8_weight_max`).

        Returns
        -------
        Model
            Its ``source_graph`` is the QDQ graph; ``precision_report`` a
            :class:`taskflow.precision.CompressionReport` (sizes and per-layer choices;
            :func:`taskflow.precision.evaluate` adds accuracy and speed).

        Raises
        ------
        InputError
            No calibration for static mode, an unknown option, or data that does not fit the
            model's inputs.

        Examples
        --------
        >>> import numpy as np
        >>> from taskflow.demo import load_digits, load_digits_model
        >>> images, labels, test_idx = load_digits()
        >>> x = (images / 16).astype(np.float32)
        >>> model = load_digits_model()
        >>> int8 = model.quantize(x[:300])
        >>> int8.precision_report.size_ratio > 3.5
        True
        >>> a = int8.run(None, {"input": x[test_idx]})[0].argmax(1)
        >>> b = model.run(None, {"input": x[test_idx]})[0].argmax(1)
        >>> bool((a == b).mean() > 0.98)
        True
        """
        from taskflow.precision import quantize

        return quantize(self, calibration, mode=mode, per_channel=per_channel, method=method,
                        percentile=percentile, client=client, batch_size=batch_size,
                        input_name=input_name, choose=choose, sample=sample,
                        reduce_range=reduce_range)

    def _derived(self, graph: Graph) -> Model:
        """A model running ``graph`` as given (already optimised: no passes run again) that
        keeps this model's source graph, device and optimisation report."""
        model = Model(graph, device=self.device, strict=self.strict, optimize=False)
        model.source_graph = self.source_graph
        model.optimize_report = self.optimize_report
        return model

    def __repr__(self) -> str:
        return (f"Model({self.graph.name!r}, inputs={self.graph.input_names}, "
                f"outputs={self.graph.output_names}, nodes={len(self.graph.nodes)})")

    # --- Dask ------------------------------------------------------------------------------------
    def predict(self, x: Any, **kwargs: Any) -> Any:
        """Lazy inference over a Dask array chunked along the batch: see
        :func:`taskflow.dask.lower.predict` for the options (``outputs``, ``mode``, ``plan``,
        ``client``, ``chunk_size``, ``fuse``).

        ``x`` is a Dask array, or a dict of input name to Dask array. Returns the single output
        array, or a tuple of arrays for several outputs. Nothing is computed.

        Examples
        --------
        >>> lazy = model.predict(images)                            # doctest: +SKIP
        >>> lazy[:8].compute()                                      # doctest: +SKIP
        """
        from taskflow.dask.lower import predict

        return predict(self, x, **kwargs)

    def to_cluster(self, client: Any) -> Model:
        """Scatter the weights to every worker of ``client``'s cluster, once.

        Later :meth:`predict` graphs reference these keys instead of carrying the weights.
        Returns the model, so ``model.to_cluster(client).predict(x)`` reads naturally.

        Parameters
        ----------
        client : distributed.Client
            The cluster's client (``taskflow.Cluster().client``).

        Returns
        -------
        Model
            ``self``.

        Examples
        --------
        >>> import taskflow as tf                                   # doctest: +SKIP
        >>> with tf.Cluster() as cluster:                           # doctest: +SKIP
        ...     logits = model.to_cluster(cluster.client).predict(images).compute()
        """
        from taskflow.dask.lower import to_cluster

        to_cluster(self, client)
        return self


def _strict(device: str, strict: bool | None) -> bool:
    """``strict`` as given, or by default: True for a gpu (see :class:`Model`)."""
    return is_gpu(device) if strict is None else bool(strict)


def _run_on_gpu(plan: ExecutionPlan, feed: dict[str, Any], wanted: list[str]) -> list[Any]:
    """``plan`` on ``feed``, the inputs moved to the device once; the outputs come back as
    the inputs came (any CuPy input: CuPy outputs), C-ordered."""
    on_device = any(is_device_array(x) for x in feed.values())
    with use_device(plan.device):
        values = plan.run({k: to_device(x) for k, x in feed.items()}, wanted)
        if on_device:
            out = [to_device(values[n]) for n in wanted]
            return [array_module(v).ascontiguousarray(v) for v in out]
    return [np.ascontiguousarray(to_host(values[n])) for n in wanted]


def load(source: str | os.PathLike | bytes | Any, *, device: str = "cpu",
         strict: bool | None = None, fix_batch: bool | None = None, optimize: bool = True,
         precision: str = "fp32") -> Model:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) as a :class:`Model`.

    Parameters
    ----------
    source : path, bytes or onnx.ModelProto
        The model. External-data weights must lie inside the model's folder.
    device : {"cpu", "gpu", "cuda", "cuda:N", "auto", "reference"}
        Kernels to run with, as in :class:`Model`; checked before the file is read.
    strict : bool or None
        As in :class:`Model`: None refuses ops without a gpu kernel on a gpu.
    fix_batch : bool or None
        Make a batch-1 export's batch dimension symbolic (None: where sound).
    optimize : bool
        Run the graph optimisation passes (default, like ONNX Runtime).
    precision : {"fp32", "bf16", "int8"}
        Run the layers whose reduced kernel is measured faster here in bf16 or dynamic int8
        (:meth:`Model.with_precision`). An int8 QDQ file (:meth:`Model.quantize`) runs every
        quantised layer int8 with ``"fp32"``; with ``"int8"`` only those measured faster (its
        calibration kept), the others fp32.

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> model = tf.load("squeezenet.onnx")                      # doctest: +SKIP
    >>> model.get_inputs()[0].shape                             # doctest: +SKIP
    ['N', 3, 224, 224]
    """
    from taskflow.frontend.onnx_import import load_onnx

    device = resolve_device(device)  # before the file is read
    if precision != "fp32":
        from taskflow.precision import check_precision

        check_precision(precision)  # before the file is read
    graph = load_onnx(source, fix_batch=fix_batch)
    model = Model(graph, device=device, strict=strict, optimize=optimize)
    return model if precision == "fp32" else model.with_precision(precision)
