"""``taskflow run`` as a user types it, from the repository root (so the relative pipeline
paths of the README work), and the address of a test cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    script = shutil.which("taskflow", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "taskflow.cli"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def address(cluster) -> str:
    """The scheduler address of a :class:`taskflow.Cluster` (for ``--scheduler``)."""
    return cluster.client.scheduler.address
