"""``Model``: a loaded graph with ONNX Runtime's calling convention.

``Model.run(output_names, input_feed)`` behaves like ``onnxruntime.InferenceSession.run``;
``get_inputs()`` / ``get_outputs()`` return objects with ``name``, ``shape`` and ``type``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.errors import DTypeError, InputError
from taskflow.executor import ExecutionPlan, dummy_feed
from taskflow.ir.graph import Graph, Node, Value


@dataclass(frozen=True)
class NodeArg:
    """A model input or output, as ONNX Runtime describes it."""

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
    """What ``taskflow info`` prints: op counts, parameters, FLOPs, notes."""

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

    def __str__(self) -> str:
        lines = [f"model     {self.name}"]
        lines += [f"input     {v!r}" for v in self.inputs]
        lines += [f"output    {v!r}" for v in self.outputs]
        lines.append(f"nodes     {sum(self.op_counts.values())}"
                     + (f" (optimised: {self.optimized})" if self.optimized else ""))
        lines.append(f"params    {self.parameters:,}")
        lines.append(f"FLOPs     {_si(self.flops_per_sample)}FLOP per sample")
        lines.append("ops       " + ", ".join(f"{k} x{v}" for k, v in self.op_counts.items()))
        lines.append("supported all ops")
        lines += [f"note      {n}" for n in self.notes]
        return "\n".join(lines)


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
    device : {"cpu", "reference"}
        Kernels to run with. ``"reference"`` runs the numpy definitions.
    strict : bool
        Refuse to fall back to the reference when a device kernel is missing.
    optimize : bool
        Run the graph passes (constant and BatchNorm folding, Dropout/Identity removal,
        op+bias+activation fusion, dead-node elimination) first, like ONNX Runtime's default
        level. ``graph`` keeps the optimised graph, ``source_graph`` the one given.

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> model = tf.load("resnet50.onnx")                        # doctest: +SKIP
    >>> probs = model.run(None, {"data": x})[0]                 # doctest: +SKIP
    """

    def __init__(self, graph: Graph, *, device: str = "cpu", strict: bool = False,
                 optimize: bool = True):
        graph.validate()
        self.source_graph = graph
        self.optimize_report = None
        if optimize:
            from taskflow.ir.optimize import optimize as run_passes

            graph, self.optimize_report = run_passes(graph)
        self.graph = graph
        self.device = device
        self.strict = strict
        self._plan = ExecutionPlan(graph, device=device, strict=strict)

    # --- ONNX Runtime compatible surface ---------------------------------------------------------
    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape or []), _type_string(v.dtype))
                for v in self.graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(v.name, list(v.shape or []), _type_string(v.dtype))
                for v in self.graph.outputs]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """Compute ``output_names`` (all outputs if None) from ``input_feed``.

        Raises
        ------
        InputError
            A missing, unexpected or wrongly shaped input, or an unknown output name.
        DTypeError
            An input of the wrong dtype (no silent casts, like ONNX Runtime).
        """
        feed = self.check_feed(input_feed)
        wanted = list(output_names) if output_names else self.graph.output_names
        known = set(self.graph.output_names)
        bad = [n for n in wanted if n not in known]
        if bad:
            raise InputError(
                f"unknown output name(s) {bad}; the model's outputs are {sorted(known)}"
            )
        values = self._plan.run(feed, wanted)
        # C order, as ONNX Runtime returns: cpu kernels may hand on channels-last views
        return [np.asarray(values[n], order="C") if self.device != "gpu" else values[n]
                for n in wanted]

    def check_feed(self, input_feed: Mapping[str, Any]) -> dict[str, Any]:
        """Validate names, dtypes and shapes of a feed (symbolic dims must agree across inputs)."""
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
    def info(self) -> ModelInfo:
        """Op counts, parameter count and FLOPs per sample (traced on one zero sample)."""
        flops_by_op: dict[str, int] = {}

        def trace(node: Node, args: list[Any], results: tuple) -> None:
            spec = ops.get(node.op)
            in_shapes = [tuple(a.shape) if a is not None else () for a in args]
            out_shapes = [tuple(r.shape) for r in results if r is not None]
            flops_by_op[node.op] = flops_by_op.get(node.op, 0) + int(
                spec.flops(in_shapes, out_shapes, **node.attrs)
            )

        self._plan.run(dummy_feed(self.graph, batch=1), trace=trace)
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
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as an ONNX file (loadable by taskflow and ONNX Runtime)."""
        import onnx

        from taskflow.frontend.onnx_export import to_onnx

        # The source graph: fused taskflow-domain ops would not load in other runtimes.
        onnx.save(to_onnx(self.source_graph), os.fspath(path))

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
        """
        from taskflow.dask.lower import to_cluster

        to_cluster(self, client)
        return self


def load(source: str | os.PathLike | bytes | Any, *, device: str = "cpu",
         strict: bool = False, fix_batch: bool | None = None, optimize: bool = True) -> Model:
    """Load an ONNX model (path, bytes or ``onnx.ModelProto``) as a :class:`Model`.

    Parameters
    ----------
    source : path, bytes or onnx.ModelProto
        The model. External-data weights must lie inside the model's folder.
    device : {"cpu", "reference"}
        Kernels to run with.
    fix_batch : bool or None
        Make a batch-1 export's batch dimension symbolic (None: where sound).
    optimize : bool
        Run the graph optimisation passes (default, like ONNX Runtime).

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> model = tf.load("squeezenet.onnx")                      # doctest: +SKIP
    >>> model.get_inputs()[0].shape                             # doctest: +SKIP
    ['N', 3, 224, 224]
    """
    from taskflow.frontend.onnx_import import load_onnx

    graph = load_onnx(source, fix_batch=fix_batch)
    return Model(graph, device=device, strict=strict, optimize=optimize)
