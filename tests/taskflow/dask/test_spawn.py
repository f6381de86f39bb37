"""Scripts that start a cluster: the missing ``if __name__ == "__main__":`` guard, and programs
read from standard input, get one clear TaskflowError instead of "Nanny failed to start"."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

START = """
import taskflow as tf
with tf.Cluster(n_workers=1, threads_per_worker=1, quiet=True) as c:
    print("workers", len(c.client.scheduler_info()["workers"]))
"""
GUARDED = """
import taskflow as tf

def main():
    with tf.Cluster(n_workers=1, threads_per_worker=1, quiet=True) as c:
        print("workers", len(c.client.scheduler_info()["workers"]))

if __name__ == "__main__":
    main()
"""


def _python(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True,
                          timeout=180)


def test_script_without_guard_is_refused_with_the_line(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(START)
    result = _python([str(script)])
    assert result.returncode != 0
    assert "TaskflowError" in result.stderr and "Nanny failed" not in result.stderr
    assert f"{script}, line 3" in result.stderr and '__name__ == "__main__"' in result.stderr


def test_program_on_stdin_is_refused():
    result = _python(["-"], stdin=START)
    assert result.returncode != 0
    assert "standard input" in result.stderr and "Nanny failed" not in result.stderr


@pytest.mark.parametrize("how", ["guarded script", "python -c"])
def test_guarded_script_and_inline_code_start_workers(tmp_path, how):
    if how == "guarded script":
        script = tmp_path / "job.py"
        script.write_text(GUARDED)
        result = _python([str(script)])
    else:
        result = _python(["-c", textwrap.dedent(START)])
    assert result.returncode == 0, result.stderr
    assert "workers 1" in result.stdout


def test_threads_need_no_guard(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(START.replace("quiet=True", "quiet=True, processes=False"))
    result = _python([str(script)])
    assert result.returncode == 0, result.stderr
