"""Read an ONNX model into taskflow's canonical :class:`~taskflow.ir.graph.Graph`.

The steps, in order: read and sanity-check the protobuf (loading external data only from inside
the model's folder); infer shapes; convert nodes, attributes and initializers; inline each
``If`` whose condition constant-folds (the branch it takes); upgrade old-opset nodes to canonical
form (:mod:`taskflow.frontend.opsets`); refuse, in one error, every node
taskflow cannot run; fold constants; and make a batch exported as 1 symbolic
(:mod:`taskflow.frontend.batch`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from taskflow.errors import (
    GraphError,
    ModelLoadError,
    ShapeError,
    TaskflowError,
    UnsupportedOpError,
)
from taskflow.frontend.batch import make_batch_symbolic
from taskflow.frontend.control_flow import inline_ifs
from taskflow.frontend.opsets import canonicalize
from taskflow.frontend.protos import BadAttribute, attrs_of, constant, tensor_array
from taskflow.ir.graph import Graph, Node, Shape, Value
from taskflow.ir.optimize import fold_constants

Source = str | os.PathLike | bytes | onnx.ModelProto

#: Oldest default-domain opset with an adapter path (opset 7 brought numpy broadcasting).
MIN_OPSET = 7
#: Import-time folding evaluates non-shape nodes only on inputs this small: shape arithmetic,
#: not weight transforms (those are the optimizer's job).
FOLD_MAX_INPUT_ELEMENTS = 100_000
#: Initializers larger than this are passed to shape inference as typed inputs, not data.
_INFER_MAX_ELEMENTS = 100_000


def load_onnx(source: Source, *, fix_batch: bool | None = None,
              base_dir: str | os.PathLike | None = None) -> Graph:
    """Load an ONNX model as a canonical, validated, constant-folded :class:`Graph`.

    Parameters
    ----------
    source : str, PathLike, bytes or onnx.ModelProto
        The model. A ``ModelProto`` is not modified.
    fix_batch : bool, optional
        Make a batch of 1 symbolic (``"N"``). ``None`` (default): when every input has a static
        dim 0 of 1 and the rewrite is provably sound (the outcome is noted in ``graph.notes``).
        ``True``: the same, but raise :class:`ShapeError` if it is not sound. ``False``: never.
    base_dir : str or PathLike, optional
        Folder that external data of a ``bytes``/``ModelProto`` source lives in (a path source
        always uses its own folder). Locations must stay inside it.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ModelLoadError
        The file is corrupt, truncated, not ONNX, or its external data is outside its folder.
    UnsupportedOpError
        Listing every node taskflow cannot run (``.ops`` is ``[(op, node_name), ...]``).

    Examples
    --------
    >>> g = load_onnx("resnet50.onnx")                        # doctest: +SKIP
    >>> g.inputs, g.notes                                     # doctest: +SKIP
    ([Value('data', float32, (N, 3, 224, 224))], ['batch dimension made symbolic ...'])
    """
    model, label = _read(source, base_dir)
    try:
        return _load(model, label, fix_batch)
    except (ValueError, KeyError, TypeError, IndexError, UnicodeError, OverflowError,
            RecursionError, onnx.checker.ValidationError) as exc:
        if isinstance(exc, TaskflowError):
            raise
        # a malformed protobuf that passed parsing: say which file, never a raw traceback
        raise ModelLoadError(f"{label} is not a valid ONNX model ({type(exc).__name__}: "
                             f"{exc}); the file is corrupt or was written by a broken "
                             "exporter") from exc


def _load(model: onnx.ModelProto, label: str, fix_batch: bool | None) -> Graph:
    model, opset = _default_opset(model, label)
    graph, unsupported = _convert(model, label)
    inline_ifs(graph, opset, unsupported, max_fold_elements=FOLD_MAX_INPUT_ELEMENTS)
    bad, notes = canonicalize(graph, opset)
    graph.notes.extend(notes)
    unsupported.extend((n.op, n.name, bad[n.name]) for n in graph.nodes if n.name in bad)
    _raise_unsupported(graph, unsupported, label)
    graph = fold_constants(graph, max_input_elements=FOLD_MAX_INPUT_ELEMENTS)
    if fix_batch is not False:
        graph = _symbolic_batch(graph, required=fix_batch is True)
    return graph


# --- reading ---------------------------------------------------------------------------------
def _read(source: Source, base_dir) -> tuple[onnx.ModelProto, str]:
    """Parse the model and resolve its external data; return it and a label for messages."""
    if isinstance(source, onnx.ModelProto):
        model, label = source, "<ModelProto>"
        folder = None if base_dir is None else os.fspath(base_dir)
        if _external_tensors(model):
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            model = copy
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label = "<bytes>"
        model = _parse(bytes(source), label)
        folder = None if base_dir is None else os.fspath(base_dir)
    elif isinstance(source, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(source))
        label = os.fspath(source)
        with open(path, "rb") as fh:  # FileNotFoundError names the path
            data = fh.read()
        model = _parse(data, label)
        if base_dir is not None:
            raise TypeError("base_dir applies to bytes and ModelProto sources; a path source "
                            "reads external data from its own folder")
        folder = os.path.dirname(path)
    else:
        raise TypeError(f"source must be a path, bytes or onnx.ModelProto, got "
                        f"{type(source).__name__!r}")
    _load_external(model, label, folder)
    return model, label


def _parse(data: bytes, label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{label!r} is not a readable ONNX model: the file is corrupt or "
                             f"truncated ({len(data)} bytes; protobuf: {exc})") from exc
    missing = [f for f, ok in (("graph", model.HasField("graph")),
                               ("ir_version", model.ir_version > 0),
                               ("opset_import", len(model.opset_import) > 0)) if not ok]
    if missing:
        raise ModelLoadError(f"{label!r} is not a readable ONNX model: it has no "
                             f"{', '.join(missing)} (the file is corrupt or truncated, or not "
                             f"ONNX; {len(data)} bytes)")
    return model


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            tensors.extend([a.t] if a.HasField("t") else [])
            tensors.extend(a.tensors)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _load_external(model: onnx.ModelProto, label: str, folder: str | None) -> None:
    """Read external tensor data, refusing any location outside ``folder``."""
    tensors = _external_tensors(model)
    if not tensors:
        return
    if folder is None:
        raise ModelLoadError(f"{label} stores tensor {tensors[0].name!r} in external data; "
                             "pass base_dir= (the folder holding the data files) to load it")
    root = os.path.realpath(folder)
    for t in tensors:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        where = f"tensor {t.name!r} of {label} refers to external data {location!r}"
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelLoadError(f"{where}: locations must be relative to the model's folder")
        real = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, real]) != root:
            raise ModelLoadError(f"{where}, which resolves to {real!r} outside the model's "
                                 f"folder {root!r}; refusing to read it")
        offset, length = int(info.get("offset", 0)), info.get("length")
        try:
            with open(real, "rb") as fh:
                fh.seek(offset)
                data = fh.read(-1 if length is None else int(length))
        except OSError as exc:
            raise ModelLoadError(f"{where}: cannot read it ({exc})") from exc
        if length is not None and len(data) != int(length):
            raise ModelLoadError(f"{where}: expected {int(length)} bytes at offset {offset}, "
                                 f"found {len(data)} (the data file is truncated)")
        t.raw_data = data
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT


def _default_opset(model: onnx.ModelProto, label: str) -> tuple[onnx.ModelProto, int]:
    """The model's default-domain opset, upgrading models older than MIN_OPSET to it.

    A model importing no default-domain opset has only foreign-domain nodes: those are listed
    as unsupported later, so it gets the newest opset here.
    """
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    newest = onnx.defs.onnx_opset_version()
    if not versions:
        return model, newest
    if versions[0] > newest:
        raise UnsupportedOpError(
            f"{label} imports default-domain opset {versions[0]}; this onnx ({onnx.__version__})"
            f" knows opsets up to {newest}: upgrade onnx")
    if versions[0] >= MIN_OPSET:
        return model, versions[0]
    return _upgrade_legacy(model, versions[0], label), MIN_OPSET


def _upgrade_legacy(model: onnx.ModelProto, opset: int, label: str) -> onnx.ModelProto:
    """Bring a pre-opset-7 model to opset 7 with onnx's version converter.

    Where the converter fails, a model whose every op kept its schema from ``opset`` to 7
    (e.g. ``Not``, ``Relu``) is read as opset 7 unchanged; anything else is refused.
    """
    model = _legacy_prelu(model)
    try:
        return onnx.version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/ConvertError
        changed = sorted({
            n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")
            and _since(n.op_type, opset) != _since(n.op_type, MIN_OPSET)
        })
        if changed:
            raise UnsupportedOpError(
                f"{label} imports default-domain opset {opset} and onnx's version converter "
                f"cannot bring it to {MIN_OPSET} ({exc}); ops whose meaning changed since: "
                f"{changed}. Re-export the model with opset >= {MIN_OPSET}") from exc
        upgraded = onnx.ModelProto.FromString(model.SerializeToString())
        for o in upgraded.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = MIN_OPSET
        return upgraded


def _legacy_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    """Before opset 7 a PRelu slope of shape (C,) applied per channel (axis 1); from 7 on it
    broadcasts numpy-style from the right. Reshape such constant slopes to (C, 1, ..., 1)."""
    prelus = [n for n in model.graph.node if n.op_type == "PRelu"]
    if not prelus:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             [*inferred.graph.value_info, *inferred.graph.input]
             if v.type.tensor_type.HasField("shape")}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            continue
        slope = numpy_helper.to_array(inits[node.input[1]])
        rank = ranks.get(node.input[0], 0)
        if slope.ndim == 1 and slope.size > 1 and rank > 2:
            fixed = slope.reshape((slope.size,) + (1,) * (rank - 2))
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(fixed, node.input[1]))
            for v in model.graph.input:  # IR < 4 also declares initializers as inputs
                if v.name == node.input[1]:
                    del v.type.tensor_type.shape.dim[:]
                    for d in fixed.shape:
                        v.type.tensor_type.shape.dim.add().dim_value = d
    return model


def _since(op: str, opset: int) -> int | None:
    try:
        return onnx.defs.get_schema(op, opset).since_version
    except onnx.defs.SchemaError:
        return None


# --- conversion --------------------------------------------------------------------------------


def _convert(model: onnx.ModelProto, label: str) -> tuple[Graph, list[tuple[str, str, str]]]:
    """Build the (not yet canonical) Graph; return it and the nodes already found unsupported."""
    g = model.graph
    unsupported: list[tuple[str, str, str]] = []
    inits = {t.name: tensor_array(t, label) for t in g.initializer}
    for t in g.sparse_initializer:
        unsupported.append(("sparse_initializer", t.values.name, "sparse tensors unsupported"))
    graph = Graph(name=g.name or "graph", initializers=inits)
    types = _infer(model, graph.notes)
    graph.inputs = [_value(v, types) for v in g.input if v.name not in inits]
    graph.outputs = [_value(v, types) for v in g.output]
    interface = set(graph.input_names) | set(graph.output_names)
    graph.values = {k: Value(k, *t) for k, t in types.items() if k not in interface}
    names = _NodeNames(g.node)
    for proto in g.node:
        domain = "" if proto.domain == "ai.onnx" else proto.domain
        name = names.next(proto)
        try:
            attrs = attrs_of(proto, domain)
        except BadAttribute as exc:
            unsupported.append((proto.op_type, name, str(exc)))
            attrs = {}
        if proto.op_type == "Constant" and not domain and len(attrs) == 1 and proto.output:
            graph.initializers[proto.output[0]] = constant(attrs)
            continue
        graph.nodes.append(Node(proto.op_type, list(proto.input), list(proto.output), attrs,
                                name, domain))
    try:
        graph.validate()
    except GraphError as exc:
        raise ModelLoadError(f"{label} has an inconsistent graph ({exc}); the file may be "
                             "corrupt or truncated") from exc
    return graph, unsupported


class _NodeNames:
    """Unique, non-empty node names (exporters often leave them empty)."""

    def __init__(self, nodes):
        self.explicit = {n.name for n in nodes if n.name}
        self.seen: set[str] = set()
        self.counter = 0

    def next(self, proto: onnx.NodeProto) -> str:
        name = proto.name
        while not name or name in self.seen or (name != proto.name and name in self.explicit):
            self.counter += 1
            name = f"{proto.op_type}_{self.counter}"
        self.seen.add(name)
        return name


def _dtype(elem_type: int) -> np.dtype | None:
    if not elem_type:
        return None
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def _type_of(tp: onnx.TypeProto) -> tuple[np.dtype | None, Shape | None]:
    if not tp.HasField("tensor_type"):
        return None, None
    tt = tp.tensor_type
    if not tt.HasField("shape"):
        return _dtype(tt.elem_type), None
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tt.shape.dim)
    return _dtype(tt.elem_type), dims


def _value(v: onnx.ValueInfoProto, types: dict) -> Value:
    dtype, shape = _type_of(v.type)
    inferred = types.get(v.name, (None, None))
    return Value(v.name, dtype if dtype is not None else inferred[0],
                 shape if shape is not None else inferred[1])


def _infer(model: onnx.ModelProto, notes: list[str]) -> dict[str, tuple]:
    """Types of every value onnx shape inference can find; empty if inference fails.

    Runs on a skeleton: large initializers become typed inputs, so no weight bytes are copied.
    """
    g = model.graph
    sk = onnx.GraphProto(name=g.name)
    sk.node.extend(g.node)
    sk.input.extend(g.input)
    sk.output.extend(g.output)
    sk.value_info.extend(g.value_info)
    declared = {v.name for v in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims)) <= _INFER_MAX_ELEMENTS:
            sk.initializer.append(t)
        elif t.name not in declared:
            sk.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    # IR >= 4: initializers need not be listed as inputs (some IR 3 files forget to)
    skeleton = onnx.ModelProto(ir_version=max(model.ir_version, 4), graph=sk)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    except Exception as exc:  # inference is a help, never a requirement
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        notes.append(f"onnx shape inference failed ({type(exc).__name__}: {first}); "
                     "intermediate shapes are unknown")
        return {}
    ig = inferred.graph
    return {v.name: _type_of(v.type) for v in [*ig.value_info, *ig.output, *ig.input]}


# --- validation and batch ------------------------------------------------------------------------
def _raise_unsupported(graph: Graph, found: list[tuple[str, str, str]], label: str) -> None:
    from taskflow import ops

    reported = {name for _, name, _ in found}
    for n in graph.nodes:
        if n.name in reported:
            continue
        spec = ops.lookup(n.op)
        if spec is None:
            why = "no such op in taskflow's registry"
        elif n.domain != spec.domain:
            why = f"domain {n.domain!r} is not supported (taskflow has {n.op} in " \
                  f"{spec.domain or 'the default domain'!r})"
        else:
            count = max((k + 1 for k, i in enumerate(n.inputs) if i), default=0)
            why = spec.check(count, n.attrs)
        if why:
            found.append((n.op, n.name, why))
    if found:
        lines = "\n".join(f"  {op} ({name}): {why}" for op, name, why in found)
        raise UnsupportedOpError(
            f"{label} has {len(found)} node(s) taskflow cannot run:\n{lines}\n"
            f"taskflow.ops.names() lists the {len(ops.names())} supported ops",
            [(op, name) for op, name, _ in found])


def _symbolic_batch(graph: Graph, required: bool) -> Graph:
    ones = [v for v in graph.inputs if v.shape and v.shape[0] == 1]
    if not graph.inputs or len(ones) != len(graph.inputs):
        if required:
            raise ShapeError(f"fix_batch=True needs every input to have a static batch of 1; "
                             f"inputs are {graph.inputs}")
        return graph
    result, why = make_batch_symbolic(graph)
    if result is None:
        if required:
            raise ShapeError(f"cannot make the batch dimension symbolic: {why}")
        graph.notes.append(f"batch dimension kept fixed at 1: {why}")
        return graph
    result.notes.append(why)
    return result
