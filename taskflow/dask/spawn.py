"""Can this program start worker processes? Checked before a local cluster spawns them.

Dask's ``LocalCluster(processes=True)`` starts workers with multiprocessing's *spawn* method:
each new interpreter re-imports the main script as ``__mp_main__``. A script that starts a
cluster at its top level, outside ``if __name__ == "__main__":``, then starts one again in
every worker, and multiprocessing refuses; a program read from standard input cannot be
re-imported at all. Dask reports both as ``RuntimeError: Nanny failed to start``, from deep
inside the workers. :func:`spawn_problem` finds them before any process starts, so
:class:`taskflow.Cluster` can say what is wrong and how to fix it.
"""

from __future__ import annotations

import ast
import os
import sys
from types import FrameType

GUARD = '`if __name__ == "__main__":`'


def spawn_problem(frame: FrameType | None = None) -> str | None:
    """Why spawned workers could not start from the running program, or None if they can.

    Parameters
    ----------
    frame : frame, optional
        Where to start looking up the stack for the main script's module-level code
        (default: the caller's frame).

    Examples
    --------
    >>> spawn_problem() is None     # run under pytest or an interactive session   # doctest: +SKIP
    True
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None:  # python -c, an interactive session, a notebook: workers skip __main__
        return None
    if not os.path.isfile(path):
        return (f"the program runs from {path!r} (standard input?), which the worker "
                "processes cannot re-import; save it as a file and start the cluster under "
                f"{GUARD}")
    line = _module_level_line(path, frame or sys._getframe(1))
    if line is None or _guarded(path, line):
        return None
    return (f"{path}, line {line}, starts the cluster at the script's top level; each worker "
            "process re-imports the script and would start a cluster of its own. Put that "
            f"code under {GUARD} (or in a function called from there)")


def _module_level_line(path: str, frame: FrameType | None) -> int | None:
    """The line of the main script's module-level code that led to ``frame``, if any."""
    target = os.path.realpath(path)
    line = None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and os.path.realpath(code.co_filename) == target:
            line = frame.f_lineno  # the outermost one is the script's own top level
        frame = frame.f_back
    return line


def _guarded(path: str, line: int) -> bool:
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return True  # cannot tell: let Dask try
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and _is_main_test(node.test)
                and node.body[0].lineno <= line <= (node.body[-1].end_lineno or line)):
            return True
    return False


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1
