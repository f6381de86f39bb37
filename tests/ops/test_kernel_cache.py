"""Cached Numba kernels never outlive the sources they were compiled from (Numba keys a cached
kernel on its own file only, and the kernels inline helpers from other files)."""

from __future__ import annotations

from pathlib import Path

from taskflow.ops.cpu.cache import invalidate_stale, source_hash


def _package(root: Path) -> Path:
    pkg = root / "ops" / "cpu"
    (pkg / "__pycache__").mkdir(parents=True)
    (pkg / "conv.py").write_text("def kernel(): return epilogue()\n")
    (pkg / "epilogue.py").write_text("def epilogue(): return 1\n")
    (root / "ops" / "conv.py").write_text("ACTIVATIONS = {'Relu': ()}\n")
    return pkg


def _cached(pkg: Path) -> Path:
    entry = pkg / "__pycache__" / "conv.kernel-1.py311.nbi"
    entry.write_bytes(b"index")
    return entry


def test_an_edit_to_an_inlined_helper_drops_every_cached_kernel(tmp_path):
    pkg = _package(tmp_path)
    invalidate_stale(pkg)                       # first sight: stamp written
    kept = _cached(pkg)
    assert invalidate_stale(pkg) is False and kept.exists()
    (pkg / "epilogue.py").write_text("def epilogue(): return 2\n")   # conv.py untouched
    assert invalidate_stale(pkg) is True and not kept.exists()


def test_an_edit_to_the_op_definitions_counts_too(tmp_path):
    pkg = _package(tmp_path)
    invalidate_stale(pkg)
    before = source_hash(pkg)
    kept = _cached(pkg)
    (tmp_path / "ops" / "conv.py").write_text("ACTIVATIONS = {'Relu': (), 'HardSwish': ()}\n")
    assert source_hash(pkg) != before
    assert invalidate_stale(pkg) is True and not kept.exists()


def test_the_real_package_is_stamped_with_its_sources():
    import taskflow.ops.cpu as cpu

    pkg = Path(cpu.__file__).parent
    stamp = pkg / "__pycache__" / "taskflow-kernel-sources.sha256"
    if stamp.exists():  # absent only where the package folder is read-only
        assert stamp.read_text() == source_hash(pkg)
