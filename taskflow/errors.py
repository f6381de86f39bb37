"""Errors raised by taskflow.

Every error is a ``TaskflowError``; the specific ones also inherit the standard Python type a
caller would catch without knowing taskflow (``ValueError``, ``TypeError``, ...). Messages name
the thing, show the value found, say what was expected and, where possible, how to fix it.
"""

from __future__ import annotations


class TaskflowError(Exception):
    """Base class of every error taskflow raises on purpose."""


class GraphError(TaskflowError, ValueError):
    """The graph is malformed: a cycle, a dangling value, a duplicate name."""


class ShapeError(TaskflowError, ValueError):
    """An array has a shape the model or op cannot take."""


class InputError(TaskflowError, ValueError):
    """A model input is missing, unexpected, or of the wrong shape or dtype."""


class DTypeError(TaskflowError, TypeError):
    """An array has a dtype the model or op cannot take."""


class UnsupportedOpError(TaskflowError, NotImplementedError):
    """The model uses ops (or op variants) taskflow has no kernel for."""

    def __init__(self, message: str, ops: list[tuple[str, str]] | None = None):
        super().__init__(message)
        #: ``[(op_type, node_name), ...]`` for every unsupported node.
        self.ops = list(ops or [])


class ModelLoadError(TaskflowError, ValueError):
    """A model file is corrupt, truncated, or refers to data it may not read."""


class ThreadBudgetError(TaskflowError, ValueError):
    """A thread plan asks for more threads than the cores this process may use."""
