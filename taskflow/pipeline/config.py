"""Pipelines declared in a small YAML or TOML file, for ``taskflow run pipeline.yaml``.

::

    name: classify
    inputs: [images]
    outputs: [labels, scores]
    stages:
      - name: preprocess
        function: normalize            # a ready step (taskflow.pipeline.steps.STEPS) ...
        args: {scale: 0.00392156862745098, layout: NHWC->NCHW}
      - name: cnn
        model: squeezenet.onnx         # relative to this file
        batch_size: 32
      - name: top5
        function: top_k
        args: {k: 5}
        outputs: [labels, scores]
      - name: mine
        function: my_steps.py:clip     # ... or MODULE:NAME / FILE.py:NAME; args become its
        args: {hi: 1.0}                #     keyword arguments (functools.partial)
      - name: inner
        pipeline: other.yaml           # a nested pipeline

The same keys as :class:`~taskflow.pipeline.Stage` (``inputs``, ``outputs``, ``batch_size``,
``priority``, ``resources``, ``device``). Every mistake is a :class:`PipelineError` naming the
file, the stage and the key before any model loads.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from taskflow.pipeline.core import Pipeline, PipelineError, Stage
from taskflow.pipeline.steps import STEPS

#: What a pipeline file's file name may end with.
SUFFIXES = (".yaml", ".yml", ".toml")
_TOP_KEYS = {"name", "inputs", "outputs", "stages"}
_STAGE_KEYS = {"name", "model", "function", "pipeline", "args", "inputs", "outputs",
               "batch_size", "priority", "resources", "device"}


def is_pipeline_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a pipeline file (by its suffix)."""
    return Path(os.fspath(path)).suffix.lower() in SUFFIXES


def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read a pipeline file (YAML or TOML) into a :class:`Pipeline`.

    Examples
    --------
    >>> pipe = load_pipeline("workflows/image_classification/pipeline.yaml")  # doctest: +SKIP
    >>> [s.name for s in pipe.stages]                                        # doctest: +SKIP
    ['preprocess', 'cnn', 'top5']
    """
    path = Path(os.fspath(path)).expanduser().resolve()
    if not path.is_file():
        raise PipelineError(f"pipeline file {str(path)!r} does not exist")
    spec = _read(path)
    return from_dict(spec, base=path.parent, where=str(path))


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            spec = tomllib.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - yaml and toml raise their own types
        raise PipelineError(f"pipeline file {str(path)!r} is not valid "
                            f"{path.suffix.lstrip('.').upper()}: {exc}") from exc
    if not isinstance(spec, dict):
        raise PipelineError(f"pipeline file {str(path)!r}: expected a mapping with keys "
                            f"{sorted(_TOP_KEYS)}; found {type(spec).__name__}")
    return spec


def from_dict(spec: dict[str, Any], *, base: str | os.PathLike = ".",
              where: str = "pipeline") -> Pipeline:
    """A :class:`Pipeline` from a parsed pipeline file; paths are relative to ``base``."""
    unknown = sorted(set(spec) - _TOP_KEYS)
    if unknown:
        raise PipelineError(f"{where}: unknown key(s) {unknown}; expected {sorted(_TOP_KEYS)}")
    stages = spec.get("stages")
    if not isinstance(stages, list) or not stages:
        raise PipelineError(f"{where}: 'stages' must be a non-empty list of stages")
    base = Path(base)
    built = [_stage(s, i, base, where) for i, s in enumerate(stages)]
    try:
        return Pipeline(built, name=str(spec.get("name") or Path(where).stem),
                        inputs=spec.get("inputs"), outputs=spec.get("outputs"))
    except PipelineError as exc:
        raise PipelineError(f"{where}: {exc}") from exc


def _stage(spec: Any, i: int, base: Path, where: str) -> Stage:
    if not isinstance(spec, dict):
        raise PipelineError(f"{where}: stage {i} is {spec!r}; expected a mapping")
    label = f"{where}: stage {spec.get('name', i)!r}"
    unknown = sorted(set(spec) - _STAGE_KEYS)
    if unknown:
        raise PipelineError(f"{label}: unknown key(s) {unknown}; expected {sorted(_STAGE_KEYS)}")
    kinds = [k for k in ("model", "function", "pipeline") if k in spec]
    if len(kinds) != 1:
        raise PipelineError(f"{label}: give exactly one of 'model', 'function', 'pipeline'; "
                            f"found {kinds or 'none'}")
    if "name" not in spec:
        raise PipelineError(f"{where}: stage {i} has no 'name'")
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise PipelineError(f"{label}: 'args' must be a mapping of keyword arguments")
    kind = kinds[0]
    if kind == "model":
        op: Any = _path(base, spec["model"], label)
        if args:
            raise PipelineError(f"{label}: a model stage takes no 'args'")
    elif kind == "pipeline":
        op = load_pipeline(_path(base, spec["pipeline"], label))
    else:
        op = _function(str(spec["function"]), args, base, label)
    options = {k: spec[k] for k in ("inputs", "outputs", "batch_size", "priority",
                                     "resources", "device") if k in spec}
    try:
        return Stage(str(spec["name"]), op, **options)
    except PipelineError as exc:
        raise PipelineError(f"{where}: {exc}") from exc


def _path(base: Path, value: Any, label: str) -> str:
    p = (base / os.path.expanduser(str(value))).resolve()
    if not p.exists():
        raise PipelineError(f"{label}: {str(p)!r} does not exist")
    return str(p)


def _function(ref: str, args: dict[str, Any], base: Path, label: str) -> Any:
    if ref in STEPS:
        try:
            return STEPS[ref](**args)
        except TypeError as exc:
            raise PipelineError(f"{label}: step {ref!r} with args {args}: {exc}") from exc
    if ":" not in ref:
        raise PipelineError(f"{label}: function {ref!r}; expected a ready step "
                            f"{sorted(STEPS)}, MODULE:NAME or FILE.py:NAME")
    module_ref, _, attr = ref.rpartition(":")
    try:
        if module_ref.endswith(".py"):
            file = Path(_path(base, module_ref, label))
            name = f"taskflow_user_{file.stem}"
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # so cloudpickle ships it by value, as a user module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_ref)
        fn = getattr(module, attr)
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever importing the user's code raises
        raise PipelineError(f"{label}: cannot load function {ref!r}: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not callable(fn):
        raise PipelineError(f"{label}: {ref!r} is {type(fn).__name__}, not a function")
    return functools.partial(fn, **args) if args else fn
