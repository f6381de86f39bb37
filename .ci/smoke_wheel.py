"""Smoke test of an installed (non-editable) taskflow, run by .ci/run from outside the checkout.

It proves what an editable install cannot: every subpackage, the bundled data and the config
files are in the wheel; the worker processes of a real cluster import taskflow from
site-packages; and the public API works end to end. Exits non-zero on the first failure.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    import dask.array as da
    import zarr

    import taskflow as tf
    from taskflow.demo import load_digits, load_digits_model

    here = Path(tf.__file__).resolve()
    assert "site-packages" in here.parts, f"taskflow imported from {here}, not the wheel"
    import taskflow.ops
    import taskflow.schedulers

    for sub in (taskflow.ops, taskflow.schedulers):
        assert Path(sub.__file__).resolve().is_relative_to(here.parent), sub.__file__
    assert "ops" not in sys.modules and "schedulers" not in sys.modules

    images, labels, test_idx = load_digits()
    x = images[test_idx[:96]].astype(np.float32) / 16
    model = load_digits_model()
    (probs,) = model.run(None, {"input": x})
    assert probs.shape == (96, 10) and probs.std(axis=0).max() > 1e-3, "outputs do not vary"
    lazy = model.predict(da.from_array(x, chunks=32))
    np.testing.assert_allclose(lazy.compute(scheduler="threads"), probs, rtol=1e-5, atol=1e-6)

    with tempfile.TemporaryDirectory() as tmp:
        src = zarr.open_array(f"{tmp}/in.zarr", mode="w", shape=x.shape, chunks=(32, 1, 8, 8),
                              dtype="float32")
        src[:] = x
        # worker processes: they import taskflow (and its kernels) from the installed wheel
        with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
            summary = tf.infer_zarr(model, f"{tmp}/in.zarr", f"{tmp}/out.zarr",
                                    client=cluster, progress="none")
        out = zarr.open_group(f"{tmp}/out.zarr", mode="r")
        name = model.get_outputs()[0].name
        np.testing.assert_allclose(out[name][:], probs, rtol=1e-5, atol=1e-6)
    assert not summary.failed, summary
    print(f"smoke: taskflow {tf.__version__} from {here.parent}: run, predict and infer_zarr "
          "on 2 worker processes agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
