"""``Pipeline``: named stages (models, Python functions on numpy batches, nested pipelines)
wired by named values, run in process, lazily on Dask, or streamed Zarr -> Zarr.

A pipeline is a small dataflow graph whose nodes are stages and whose edges are named batch
arrays ("values"). Every value has the batch on axis 0 and every stage must keep rows apart
(row i of an output depends on row i of the inputs only): that is what lets the Dask lowering
(:mod:`taskflow.dask.pipeline`) and ``infer_zarr`` cut the batch into chunks. A model stage is
checked by the batch trace of :mod:`taskflow.dask.trace`; a function stage is the user's word.

Wiring, by default a chain: a stage reads the previous stage's outputs (the first stage the
pipeline's inputs) and writes one value named after itself (a model with several outputs:
``<stage>.<output>``). ``inputs=`` and ``outputs=`` name values explicitly, which is how
fan-out (two stages reading ``images``) and fan-in (a stage reading ``a`` and ``b``) are
written. The pipeline's outputs are the last stage's values unless named.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow.errors import InputError, PipelineError, ShapeError, TaskflowError

#: Stage kinds, from what the stage wraps.
MODEL, FUNCTION, PIPELINE = "model", "function", "pipeline"


@dataclass
class Stage:
    """One step of a :class:`Pipeline`.

    Parameters
    ----------
    name : str
        Unique within the pipeline; names its default output value, its Dask keys and its
        row on the dashboard.
    op : Model, path, callable or Pipeline
        A :class:`taskflow.Model` (or an ONNX file to load), a function of numpy batches
        (``fn(*arrays) -> array | tuple | dict``, run on the workers; it must keep rows apart),
        or a nested :class:`Pipeline`.
    inputs : list of str, or dict, optional
        The values the stage reads, in the order of the op's inputs; for a model, also
        ``{model input name: value}``. Default: the previous stage's outputs (the first
        stage: the pipeline's inputs).
    outputs : list of str, optional
        Names of the values it writes. Default: ``[name]`` for one output; a model's or nested
        pipeline's several outputs as ``<name>.<output>``. A function returning a tuple or
        dict needs them (a dict is matched by key).
    batch_size : int, optional
        Rows per call of this stage; a bigger chunk is fed in slices of this many rows
        (memory of a large model's activations), a smaller one as it is.
    priority : int
        Dask priority of this stage's tasks in :meth:`Pipeline.predict` (higher first).
    resources : dict, optional
        Dask worker resources its tasks need in :meth:`Pipeline.predict`, e.g. ``{"GPU": 1}``.
    device : {"cpu", "gpu"}, optional
        A model stage's device; "gpu" also asks for the ``GPU`` resource.

    Examples
    --------
    >>> import numpy as np, taskflow as tf
    >>> s = tf.Stage("scale", lambda x: x / 255.0)
    >>> s.kind, s.name
    ('function', 'scale')
    """

    name: str
    op: Any
    inputs: Sequence[str] | Mapping[str, str] | None = None
    outputs: Sequence[str] | None = None
    batch_size: int | None = None
    priority: int = 0
    resources: Mapping[str, float] | None = None
    device: str | None = None
    kind: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise PipelineError(f"stage name {self.name!r}; expected a non-empty string "
                                "without '/'")
        if isinstance(self.op, (str, os.PathLike)):
            from taskflow.model import load

            self.op = load(self.op, device=self.device or "cpu")
        if isinstance(self.op, Pipeline):
            self.kind = PIPELINE
        elif hasattr(self.op, "graph") and hasattr(self.op, "run"):
            self.kind = MODEL
            if self.device and self.device != self.op.device:
                from taskflow.model import Model

                self.op = Model(self.op.graph, device=self.device, strict=self.op.strict,
                                optimize=False)
        elif callable(self.op):
            self.kind = FUNCTION
        else:
            raise PipelineError(f"stage {self.name!r}: op {self.op!r}; expected a Model, an "
                                "ONNX path, a function of numpy batches or a Pipeline")
        if self.batch_size is not None and (not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise PipelineError(f"stage {self.name!r}: batch_size={self.batch_size!r}; "
                                "expected an integer >= 1")
        if self.device not in (None, "cpu", "gpu"):
            raise PipelineError(f"stage {self.name!r}: device={self.device!r}; expected "
                                "'cpu' or 'gpu'")
        self._op_inputs = self._read_op_inputs()  # once: _call reads them for every batch

    # --- the op's own interface -------------------------------------------------------------
    def op_inputs(self) -> list[str] | None:
        """The op's input names (a function's parameters without defaults), or None for a
        function that takes ``*args``."""
        return None if self._op_inputs is None else list(self._op_inputs)

    def _read_op_inputs(self) -> list[str] | None:
        if self.kind == MODEL:
            return [v.name for v in self.op.get_inputs()]
        if self.kind == PIPELINE:
            return list(self.op.input_names)
        try:
            params = inspect.signature(self.op).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_POSITIONAL for p in params):
            return None
        return [p.name for p in params if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def op_outputs(self) -> list[str] | None:
        if self.kind == MODEL:
            return [v.name for v in self.op.get_outputs()]
        if self.kind == PIPELINE:
            return list(self.op.output_names)
        # a step that names what it returns (itself, or the function a partial wraps)
        names = getattr(self.op, "output_names", None) or \
            getattr(getattr(self.op, "func", None), "output_names", None)
        return list(names) if names else None

    def call(self, args: list[np.ndarray]) -> list[np.ndarray]:
        """Run the op on one batch (``args`` in :attr:`input_values` order), in slices of
        ``batch_size`` rows; returns the arrays of :attr:`output_values`."""
        rows = len(args[0]) if args and np.ndim(args[0]) else 0
        step = self.batch_size
        if step is None or rows <= step:
            return self._call(args)
        parts = [self._call([a[i:i + step] for a in args]) for i in range(0, rows, step)]
        return [np.concatenate(ys) for ys in zip(*parts)]

    def _call(self, args: list[np.ndarray]) -> list[np.ndarray]:
        if self.kind == MODEL:
            feed = dict(zip(self._op_inputs, args))
            return self.op.run(None, feed)
        if self.kind == PIPELINE:
            return self.op.run(None, dict(zip(self.op.input_names, args)))
        try:
            result = self.op(*args)
        except TaskflowError:
            raise
        except Exception as exc:
            raise TaskflowError(f"stage {self.name!r} ({_callable_name(self.op)}) failed on a "
                                f"batch of {len(args[0]) if args else 0} rows: "
                                f"{type(exc).__name__}: {exc}") from exc
        return self._unpack(result)

    def _unpack(self, result: Any) -> list[np.ndarray]:
        names = self.output_values
        if isinstance(result, Mapping):
            keys = names if all(n in result for n in names) else self.op_outputs() or names
            missing = [n for n in keys if n not in result]
            if missing or len(keys) != len(names):
                raise ShapeError(f"stage {self.name!r} returned a dict with keys "
                                 f"{sorted(result)}; its outputs are {names}")
            values = [result[n] for n in keys]
        elif isinstance(result, (tuple, list)):
            if len(result) != len(names):
                raise ShapeError(f"stage {self.name!r} returned {len(result)} arrays; its "
                                 f"outputs are {names} (declare outputs=[...] to match)")
            values = list(result)
        else:
            if len(names) != 1:
                raise ShapeError(f"stage {self.name!r} returned one array; its outputs are "
                                 f"{names}")
            values = [result]
        return [np.asarray(v) for v in values]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.kind == MODEL:  # a model travels as its graph; its kernels are rebuilt
            state["op"] = _ModelState(self.op.graph, self.op.device, self.op.strict)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("op"), _ModelState):
            state["op"] = state["op"].build()
        self.__dict__.update(state)

    # set by Pipeline when it wires the stage
    input_values: list[str] = field(init=False, default_factory=list, repr=False)
    output_values: list[str] = field(init=False, default_factory=list, repr=False)


class _ModelState:
    """A model stage's model while it travels: the optimised graph, device and strictness."""

    def __init__(self, graph: Any, device: str, strict: bool):
        self.graph, self.device, self.strict = graph, device, strict

    def build(self) -> Any:
        from taskflow.model import Model

        return Model(self.graph, device=self.device, strict=self.strict, optimize=False)


def _callable_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class Pipeline:
    """Stages wired by named batch arrays, run as one unit.

    Parameters
    ----------
    stages : list of Stage, or of (name, op) pairs
        In an order where every stage comes after the stages whose values it reads.
    name : str
        The pipeline's name: on the dashboard, in metrics, in job names (default
        ``"pipeline"``).
    inputs : list of str, optional
        The pipeline's input values (default: what the first stage reads by its op's input
        names).
    outputs : list of str, optional
        The values :meth:`run`, :meth:`predict` and ``infer_zarr`` produce (default: the last
        stage's); any value can be one, so intermediates are kept only when asked for.

    Examples
    --------
    >>> import numpy as np, taskflow as tf
    >>> from taskflow.frontend import nn
    >>> cnn = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> pipe = tf.Pipeline([
    ...     tf.Stage("scale", lambda x: (x / 255.0).astype(np.float32), inputs=["raw"]),
    ...     tf.Stage("model", cnn),
    ...     tf.Stage("top1", lambda logits: logits.argmax(axis=1)),
    ... ], name="classify")
    >>> pipe.input_names, pipe.output_names
    (['raw'], ['top1'])
    >>> pipe.run(None, {"raw": np.full((5, 4), 255, np.uint8)})[0].shape
    (5,)
    """

    def __init__(self, stages: Sequence[Stage | tuple[str, Any]], *, name: str = "pipeline",
                 inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None):
        if not isinstance(name, str) or not name:
            raise PipelineError(f"pipeline name {name!r}; expected a non-empty string")
        self.name = name
        self.stages = [s if isinstance(s, Stage) else Stage(*s) for s in stages]
        if not self.stages:
            raise PipelineError(f"pipeline {name!r} has no stages")
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise PipelineError(f"pipeline {name!r}: two stages are named {s.name!r}")
            seen.add(s.name)
        self.input_names = self._wire(list(inputs) if inputs is not None else None)
        # the wiring, read by every run: which stage writes a value, the last one to read it
        self._writer = {v: s for s in self.stages for v in s.output_values}
        self._last_use = {v: i for i, s in enumerate(self.stages) for v in s.input_values}
        self._values = set(self.input_names) | set(self._writer)
        self.output_names = list(outputs) if outputs else list(self.stages[-1].output_values)
        bad = [v for v in self.output_names if v not in self._values]
        if bad:
            raise PipelineError(f"pipeline {name!r}: output(s) {bad} are no stage's value; "
                                f"the values are {sorted(self._values)}")

    def _wire(self, inputs: list[str] | None) -> list[str]:
        first = self.stages[0]
        if inputs is None:
            inputs = _as_list(first.inputs) or first.op_inputs()
            if not inputs:
                raise PipelineError(f"pipeline {self.name!r}: cannot tell its inputs from "
                                    f"stage {first.name!r}; pass inputs=[...]")
        available = list(inputs)
        previous = list(inputs)
        for s in self.stages:
            s.input_values = self._stage_inputs(s, previous)
            unknown = [v for v in s.input_values if v not in available]
            if unknown:
                raise PipelineError(f"pipeline {self.name!r}: stage {s.name!r} reads "
                                    f"{unknown}, which no earlier stage writes and which are "
                                    f"not inputs; the values before it are {available}")
            s.output_values = self._stage_outputs(s)
            clash = [v for v in s.output_values if v in available]
            if clash:
                raise PipelineError(f"pipeline {self.name!r}: stage {s.name!r} writes "
                                    f"{clash}, already a value; name its outputs=[...]")
            available += s.output_values
            previous = s.output_values
        return list(inputs)

    def _stage_inputs(self, s: Stage, previous: list[str]) -> list[str]:
        wanted = s.op_inputs()
        if isinstance(s.inputs, Mapping):
            if wanted is None or set(s.inputs) != set(wanted):
                raise PipelineError(f"stage {s.name!r}: inputs={dict(s.inputs)!r} must map "
                                    f"each of the op's inputs {wanted} to a value")
            return [s.inputs[k] for k in wanted]
        values = _as_list(s.inputs) or list(previous)
        if wanted is not None and len(values) != len(wanted):
            raise PipelineError(f"stage {s.name!r} takes {len(wanted)} input(s) {wanted} but "
                                f"reads {len(values)} value(s) {values}; pass inputs=[...]")
        return values

    def _stage_outputs(self, s: Stage) -> list[str]:
        if s.outputs is not None:
            names = _as_list(s.outputs)
            natural = s.op_outputs()
            if natural is not None and len(names) != len(natural):
                raise PipelineError(f"stage {s.name!r}: outputs={names} but its op has "
                                    f"{len(natural)} output(s) {natural}")
            return names
        natural = s.op_outputs()
        if natural is None or len(natural) == 1:
            return [s.name]
        return [f"{s.name}.{o}" for o in natural]

    # --- running ---------------------------------------------------------------------------
    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None, *, stage_seconds: dict[str, float] | None = None
            ) -> list[np.ndarray]:
        """Compute ``output_names`` (default: the pipeline's outputs) from ``input_feed``, in
        this process, stage by stage; a value is dropped once no later stage reads it.

        The signature of :meth:`taskflow.Model.run` (and ONNX Runtime's), so a pipeline goes
        wherever a model does. ``stage_seconds``, when given, receives each stage's seconds.

        Examples
        --------
        >>> import numpy as np, taskflow as tf
        >>> pipe = tf.Pipeline([("double", lambda x: 2 * x), ("inc", lambda y: y + 1)])
        >>> pipe.run(None, {"x": np.arange(3)})[0]
        array([1, 3, 5])
        """
        wanted = list(output_names) if output_names else list(self.output_names)
        self.check_names(input_feed)
        values: dict[str, Any] = dict(input_feed)
        bad = [n for n in wanted if n not in self._values]
        if bad:
            raise InputError(f"unknown output name(s) {bad}; pipeline {self.name!r} has "
                             f"values {sorted(self._values)}")
        needed = self._needed(wanted)
        rows = {len(x) for x in values.values() if np.ndim(x)}
        for i, s in enumerate(self.stages):
            if s.name not in needed:
                continue
            t = time.perf_counter()
            ys = s.call([values[v] for v in s.input_values])
            if stage_seconds is not None:
                stage_seconds[s.name] = stage_seconds.get(s.name, 0.0) + \
                    time.perf_counter() - t
            for v, y in zip(s.output_values, ys):
                if rows and (np.ndim(y) == 0 or len(y) not in rows):
                    raise ShapeError(f"stage {s.name!r} output {v!r} has shape "
                                     f"{np.shape(y)} for a batch of {max(rows)} rows; every "
                                     "stage must keep the batch on axis 0, row for row")
                values[v] = y
            for v in s.input_values:  # free what no later stage reads
                if self._last_use.get(v) == i and v not in wanted:
                    values.pop(v, None)
        return [values[n] for n in wanted]

    def check_feed(self, input_feed: Mapping[str, Any]) -> dict[str, Any]:
        """Check a feed's names, and the shapes and dtypes of inputs that go straight into a
        model stage (:meth:`taskflow.Model.check_feed`; it reads only ``shape`` and
        ``dtype``); what functions make of the rest shows when the pipeline runs."""
        self.check_names(input_feed)
        for s in self.stages:
            if s.kind in (MODEL, PIPELINE) and all(v in input_feed for v in s.input_values):
                names = s.op_inputs()
                try:
                    s.op.check_feed({n: input_feed[v] for n, v in zip(names, s.input_values)})
                except TaskflowError as exc:
                    raise type(exc)(f"stage {s.name!r}: {exc}") from exc
        return dict(input_feed)

    def check_names(self, given: Mapping[str, Any]) -> None:
        """An :class:`InputError` unless ``given`` names exactly the pipeline's inputs."""
        if set(given) != set(self.input_names):
            raise InputError(f"pipeline {self.name!r} takes inputs {self.input_names}; "
                             f"the feed has {list(given)}")

    def _needed(self, wanted: list[str]) -> set[str]:
        """Stages that ``wanted`` depends on (the others are skipped)."""
        need, todo = set(), list(wanted)
        while todo:
            s = self._writer.get(todo.pop())
            if s is not None and s.name not in need:
                need.add(s.name)
                todo += s.input_values
        return need

    def __call__(self, input_feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """``{output name: array}`` for ``input_feed``: :meth:`run` as a dict."""
        return dict(zip(self.output_names, self.run(None, input_feed)))

    def predict(self, x: Any, **kwargs: Any) -> dict[str, Any]:
        """Lazy Dask arrays of the pipeline's outputs, one graph for every stage: see
        :func:`taskflow.dask.pipeline.predict` (``outputs``, ``client``, ``chunk_size``).

        Examples
        --------
        >>> lazy = pipe.predict(dask_images)                        # doctest: +SKIP
        >>> dask.compute(*lazy.values())                            # doctest: +SKIP
        """
        from taskflow.dask.pipeline import predict

        return predict(self, x, **kwargs)

    # --- what the stream and the dashboard need ------------------------------------------
    @property
    def device(self) -> str:
        return ",".join(sorted({m.device for m in self.models()})) or "cpu"

    def models(self) -> list[Any]:
        """Every model of the pipeline, nested pipelines' included."""
        out = []
        for s in self.stages:
            if s.kind == MODEL:
                out.append(s.op)
            elif s.kind == PIPELINE:
                out += s.op.models()
        return out

    def trace(self, input_feed: Mapping[str, Any]) -> dict[str, list[tuple[tuple, np.dtype]]]:
        """Run ``input_feed`` (a small sample) and return each model stage's input shapes and
        dtypes by stage name (nested: ``outer/inner``), for checks that need them."""
        found: dict[str, list[tuple[tuple, np.dtype]]] = {}
        values: dict[str, Any] = dict(input_feed)
        for s in self.stages:
            args = [values[v] for v in s.input_values]
            if s.kind == MODEL:
                found[s.name] = [(np.shape(a), np.asarray(a).dtype) for a in args]
            elif s.kind == PIPELINE:
                inner = s.op.trace(dict(zip(s.op.input_names, args)))
                found.update({f"{s.name}/{k}": v for k, v in inner.items()})
            values.update(zip(s.output_values, s.call(args)))
        return found

    def functions(self) -> list[Any]:
        """Every function stage's callable, nested pipelines' included (what must travel to
        the workers by value when it comes from the user's own module)."""
        out = []
        for s in self.stages:
            if s.kind == FUNCTION:
                out.append(s.op)
            elif s.kind == PIPELINE:
                out += s.op.functions()
        return out

    def stage_models(self) -> dict[str, Any]:
        """Model stages by their :meth:`trace` name."""
        out = {}
        for s in self.stages:
            if s.kind == MODEL:
                out[s.name] = s.op
            elif s.kind == PIPELINE:
                out.update({f"{s.name}/{k}": m for k, m in s.op.stage_models().items()})
        return out

    def fingerprint(self) -> str:
        """SHA-256 of the wiring, each model's graph and weights and each function's code and
        closure: ``infer_zarr``'s resume refuses a target written by another pipeline."""
        from taskflow.ir.fingerprint import function_update, model_hash, update

        h = hashlib.sha256()
        update(h, [self.name, self.input_names, self.output_names])
        for s in self.stages:
            update(h, [s.name, s.kind, s.input_values, s.output_values, s.batch_size])
            if s.kind == FUNCTION:
                function_update(h, s.op)
            else:
                h.update(model_hash(s.op).encode())
        return h.hexdigest()

    def describe(self) -> list[dict[str, Any]]:
        """One plain dict per stage (kind, what it wraps, inputs, outputs)."""
        return [{"stage": s.name, "kind": s.kind,
                 "op": (s.op.graph.name if s.kind == MODEL else s.op.name
                        if s.kind == PIPELINE else _callable_name(s.op)),
                 "inputs": s.input_values, "outputs": s.output_values} for s in self.stages]

    def __repr__(self) -> str:
        chain = ", ".join(f"{s.name}:{s.kind}" for s in self.stages)
        return (f"Pipeline({self.name!r}, inputs={self.input_names}, "
                f"outputs={self.output_names}, stages=[{chain}])")


def _as_list(x: Any) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    return list(x)


def with_postprocess(model: Any, postprocess: Any, sample: Mapping[str, np.ndarray]) -> Pipeline:
    """``model`` then ``postprocess`` as a two-stage pipeline (``infer_zarr(postprocess=)``).

    ``postprocess(*model outputs)`` returns an array (written as ``postprocess``), a tuple
    (``postprocess.0``, ...) or a dict (its keys). A :class:`Stage` is used as given. The
    output names come from one call on ``sample`` (one row of the model's input).
    """
    names = [v.name for v in model.get_outputs()]
    first = Stage("model", model, outputs=names)
    if isinstance(postprocess, Stage):
        stage = postprocess
    elif callable(postprocess):
        result = postprocess(*model.run(None, dict(sample)))
        if isinstance(result, Mapping):
            outputs = [str(k) for k in result]
        elif isinstance(result, (tuple, list)):
            outputs = [f"postprocess.{i}" for i in range(len(result))]
        else:
            outputs = ["postprocess"]
        stage = Stage("postprocess", postprocess, inputs=names, outputs=outputs)
    else:
        raise PipelineError(f"postprocess={postprocess!r}; expected a function of the model's "
                            f"outputs {names} or a Stage")
    return Pipeline([first, stage], name=getattr(model.graph, "name", None) or "model")
