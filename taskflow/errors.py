"""Errors raised by taskflow.

Every error is a ``TaskflowError``; the specific ones also inherit the standard Python type a
caller would catch without knowing taskflow (``ValueError``, ``TypeError``, ...). Messages name
the thing, show the value found, say what was expected and, where possible, how to fix it.
"""

from __future__ import annotations


class TaskflowError(Exception):
    """Base class of every error taskflow raises on purpose.

    Examples
    --------
    >>> import taskflow as tf
    >>> try:
    ...     tf.load(b"not a model")
    ... except tf.TaskflowError as exc:
    ...     print(type(exc).__name__)
    ModelLoadError
    """


class GraphError(TaskflowError, ValueError):
    """The graph is malformed: a cycle, a dangling value, a duplicate name.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow import Graph, Node, Value
    >>> g = Graph(nodes=[Node("Relu", ["x"], ["y"])], inputs=[Value("x", np.float32)],
    ...           outputs=[Value("z")])
    >>> g.validate()
    Traceback (most recent call last):
    ...
    taskflow.errors.GraphError: graph output 'z' is never produced
    """


class ShapeError(TaskflowError, ValueError):
    """An array has a shape the model or op cannot take.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> nn.Sequential([nn.Dense(4, 3), nn.Dense(5, 2)], input_shape=(4,))
    ... # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    taskflow.errors.ShapeError: Sequential 'sequential': layer 1 does not fit the output of ...
    """


class InputError(TaskflowError, ValueError):
    """A model input is missing, unexpected, or of the wrong shape or dtype.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> model.run(None, {"images": np.ones((2, 4), np.float32)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    taskflow.errors.InputError: missing input(s) ['input']; unexpected input(s) ['images']; ...
    """


class DTypeError(TaskflowError, TypeError):
    """An array has a dtype the model or op cannot take.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> try:
    ...     model.run(None, {"input": np.ones((2, 4))})       # float64, model wants float32
    ... except TypeError as exc:                                # also a TaskflowError
    ...     print(exc)
    input 'input' has dtype float64; the model expects float32 (cast it with x.astype(np.float32))
    """


class UnsupportedOpError(TaskflowError, NotImplementedError):
    """The model uses ops (or op variants) taskflow has no kernel for.

    Attributes
    ----------
    ops : list of (str, str)
        ``(op_type, node_name)`` of every unsupported node, to report them all at once.

    Examples
    --------
    >>> import taskflow as tf
    >>> from onnx import TensorProto, helper
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Unique", ["x"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    >>> try:
    ...     tf.load(helper.make_model(graph))
    ... except tf.UnsupportedOpError as exc:
    ...     print(exc.ops)
    [('Unique', 'Unique_1')]
    """

    def __init__(self, message: str, ops: list[tuple[str, str]] | None = None):
        super().__init__(message)
        #: ``[(op_type, node_name), ...]`` for every unsupported node.
        self.ops = list(ops or [])


class ModelLoadError(TaskflowError, ValueError):
    """A model file is corrupt, truncated, or refers to data it may not read.

    Examples
    --------
    >>> import taskflow as tf
    >>> tf.load(b"not a model")                                  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    taskflow.errors.ModelLoadError: '<bytes>' is not a readable ONNX model: the file is corrupt ...
    """


class ThreadBudgetError(TaskflowError, ValueError):
    """A thread plan asks for more threads than the cores this process may use.

    Raised by :class:`taskflow.Cluster` and :func:`taskflow.dask.threads.make_plan` unless
    ``oversubscribe=True``.

    Examples
    --------
    >>> from taskflow.dask.threads import make_plan
    >>> make_plan(4, 2, 2, cores=2)                               # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    taskflow.errors.ThreadBudgetError: 4 workers x 2 threads x 2 kernel threads = 16 threads > ...
    """


class WorkerDiedError(TaskflowError, RuntimeError):
    """Dask workers died running taskflow's work, most often because their memory limit is too
    small for taskflow itself or for a chunk.

    The message names the workers, their memory limits, about how much memory is needed and
    what to change (:mod:`taskflow.dask.memory` writes it).

    Examples
    --------
    >>> from taskflow.errors import TaskflowError, WorkerDiedError
    >>> issubclass(WorkerDiedError, TaskflowError), issubclass(WorkerDiedError, RuntimeError)
    (True, True)
    """


class PipelineError(TaskflowError, ValueError):
    """A pipeline that cannot be wired or read: an unknown value or key, a name used twice, a
    stage that does not fit what it reads.

    Examples
    --------
    >>> import taskflow as tf
    >>> tf.Pipeline([("a", lambda x: x), ("a", lambda x: x)])
    Traceback (most recent call last):
    ...
    taskflow.errors.PipelineError: pipeline 'pipeline': two stages are named 'a'
    """
