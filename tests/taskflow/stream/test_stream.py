"""``infer_zarr`` on real Zarr stores and a real 2-worker LocalCluster (processes): outputs are
byte-for-byte those of an in-process ``Model.run`` over the same rows; bad jobs are refused
before anything runs; the window bounds the tasks in flight."""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr
from distributed.diagnostics.plugin import SchedulerPlugin

import taskflow as tf
from taskflow.dask.threads import detect_cores
from taskflow.errors import DTypeError, InputError, TaskflowError
from taskflow.stream.manifest import ResumeError, TargetExistsError, model_hash

from .stream_helpers import (
    ROOT,
    digits_images,
    digits_model,
    done_markers,
    other_digits_model,
    reference,
    rgb_model,
    run_cli,
    two_input_model,
    write_array,
)

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")]
SCALE = {"scale": 1 / 16}
MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    return digits_model()


def test_v3_group_ragged_last_chunk_matches_model_run(tmp_path, cluster, digits):
    images = digits_images(450)                       # 7 chunks of 64 + one of 2
    src = write_array(tmp_path / "src.zarr", images, 64, name="input")
    write_array(src, np.arange(450), 64, name="labels")  # other arrays in the group are ignored
    updates = []
    s = tf.infer_zarr(digits, src, tmp_path / "out.zarr", preprocess=SCALE, client=cluster,
                      progress=updates.append)
    assert s.ok and (s.chunks_total, s.chunks_done, s.samples) == (8, 8, 450)
    assert updates[-1]["chunks_done"] == 8 and updates[-1]["eta_s"] == 0
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    y = out["output"]
    assert y.shape == (450, 10) and y.chunks == (64, 10) and y.dtype == np.float32
    (want,) = reference(digits, {"input": images}, 64, SCALE)
    assert y[:].tobytes() == want.tobytes()
    meta = out.attrs["taskflow"]
    assert meta["model"] == {"name": "digits_cnn", "sha256": model_hash(digits),
                             "device": "cpu"}
    source = dict(meta["inputs"]["input"])
    assert len(source.pop("content")) == 32                 # the stored objects' fingerprint
    assert source == {"location": src, "path": "input", "shape": [450, 1, 8, 8],
                      "dtype": "uint8", "chunks": [64, 1, 8, 8], "zarr_format": 3}
    assert meta["preprocess"] == {"input": {"dtype": "float32", "scale": 0.0625}}
    assert meta["version"] == tf.__version__ and done_markers(tmp_path / "out.zarr") == 8


def test_v2_array_rechunked_by_batch_size(tmp_path, cluster, digits):
    images = digits_images(300)
    src = write_array(tmp_path / "src.zarr", images, 50, zarr_format=2)
    s = tf.infer_zarr(digits, src, tmp_path / "out.zarr", batch_size=32, preprocess=SCALE,
                      client=cluster, progress="none")
    assert s.ok and s.chunks_done == 10                 # tasks straddle the source's chunks
    y = zarr.open_group(tmp_path / "out.zarr", mode="r")["output"]
    assert y.chunks == (32, 10)
    (want,) = reference(digits, {"input": images}, 32, SCALE)
    assert y[:].tobytes() == want.tobytes()


def test_declared_preprocessing_uint8_nhwc_mean_std(tmp_path, cluster):
    model = rgb_model()
    images = np.random.default_rng(1).integers(0, 256, (45, 4, 5, 3), dtype=np.uint8)
    src = write_array(tmp_path / "src.zarr", images, 10)
    pre = {"scale": "uint8", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
           "layout": "NHWC->NCHW"}
    s = tf.infer_zarr(model, src, tmp_path / "out.zarr", preprocess=pre, client=cluster,
                      outputs=["scores"], progress="none")
    assert s.ok and s.chunks_done == 5
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    assert sorted(name for name, _ in out.arrays()) == ["scores"]
    (want,) = reference(model, {"images": images}, 10, pre, outputs=["scores"])
    assert out["scores"][:].tobytes() == want.tobytes()
    # ... and the declared steps mean what they say
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    x = (x - np.float32([0.485, 0.456, 0.406])[:, None, None]) / \
        np.float32([0.229, 0.224, 0.225])[:, None, None]
    (plain,) = model.run(["scores"], {"images": x})
    np.testing.assert_allclose(out["scores"][:], plain, rtol=1e-5, atol=1e-6)
    assert out.attrs["taskflow"]["preprocess"]["images"]["layout"] == "NHWC->NCHW"


def test_group_feeds_inputs_by_name_and_mapping(tmp_path, cluster):
    model = two_input_model()
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((37, 4)).astype(np.float32) for _ in range(2))
    src = write_array(tmp_path / "src.zarr", a, 8, name="a")
    write_array(src, b, 16, name="b")                   # chunking may differ per input
    s = tf.infer_zarr(model, src, tmp_path / "out.zarr", client=cluster, progress="none")
    assert s.ok and s.chunks_done == 5                  # tasks follow the first input
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    want = reference(model, {"a": a, "b": b}, 8)
    assert [out[n][:].tobytes() for n in ("mixed", "prod")] == [w.tobytes() for w in want]
    swapped = {"a": f"{src}/b", "b": f"{src}/a"}        # explicit mapping of input -> array
    s = tf.infer_zarr(model, swapped, tmp_path / "swapped.zarr", client=cluster,
                      progress="none")
    want = reference(model, {"a": b, "b": a}, 16)
    out = zarr.open_group(tmp_path / "swapped.zarr", mode="r")
    assert out["mixed"][:].tobytes() == want[0].tobytes()


@pytest.mark.parametrize("case, error, text", [
    ("dtype", DTypeError, "has dtype uint8; the model expects float32"),
    ("shape", InputError, "axis 3 must be 8"),
    ("unknown", InputError, "unknown input name(s) ['images']"),
    ("group", InputError, "has no array named 'input'"),
    ("mean", InputError, "mean has 3 values"),
    ("output", InputError, "unknown output name(s) ['logits']"),
])
def test_bad_input_refused_before_any_task(tmp_path, cluster, digits, case, error, text):
    images = digits_images(20)
    src = write_array(tmp_path / "src.zarr", images, 10)
    kw = {"preprocess": SCALE}
    if case == "dtype":
        kw = {}
    elif case == "shape":
        src = write_array(tmp_path / "wide.zarr", np.zeros((20, 1, 8, 9), np.uint8), 10)
    elif case == "unknown":
        src = {"images": src}
    elif case == "group":
        src = write_array(tmp_path / "g.zarr", images, 10, name="pixels")
        write_array(src, np.arange(20), 10, name="labels")
    elif case == "mean":
        kw = {"preprocess": {"scale": 0.0625, "mean": [0.1, 0.2, 0.3]}}
    else:
        kw["outputs"] = ["logits"]
    before = cluster.client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
    with pytest.raises(error) as info:
        tf.infer_zarr(digits, src, tmp_path / "out.zarr", client=cluster, progress="none", **kw)
    assert text in str(info.value)
    assert not (tmp_path / "out.zarr").exists()
    assert cluster.client.run_on_scheduler(
        lambda dask_scheduler: len(dask_scheduler.tasks)) == before


def test_existing_target_refused_then_overwrite(tmp_path, cluster, digits):
    src = write_array(tmp_path / "src.zarr", digits_images(40), 20)
    dst = tmp_path / "out.zarr"
    tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, progress="none")
    stamp = (dst / "output" / "c" / "0" / "0").stat().st_mtime_ns
    with pytest.raises(TargetExistsError, match="exists; pass resume=True"):
        tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, progress="none")
    assert (dst / "output" / "c" / "0" / "0").stat().st_mtime_ns == stamp
    s = tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, progress="none",
                      resume=True)
    assert s.ok and (s.chunks_done, s.chunks_skipped) == (0, 2)
    s = tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, progress="none",
                      overwrite=True)
    assert s.ok and s.chunks_done == 2
    with pytest.raises(TaskflowError, match="overlaps source"):
        tf.infer_zarr(digits, src, tmp_path / "src.zarr" / "out", preprocess=SCALE,
                      client=cluster)


def test_resume_refuses_a_different_job(tmp_path, cluster, digits):
    src = write_array(tmp_path / "src.zarr", digits_images(40), 20)
    dst = tmp_path / "out.zarr"
    tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, progress="none")
    with pytest.raises(ResumeError, match=r"model\.sha256: sha256 \w{12} in the manifest"):
        tf.infer_zarr(other_digits_model(), src, dst, preprocess=SCALE, client=cluster,
                      resume=True)
    with pytest.raises(ResumeError, match=r"batch_size: 20 in the manifest, 10 now"):
        tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, resume=True,
                      batch_size=10)
    with pytest.raises(ResumeError, match=r"preprocess\.input\.scale"):
        tf.infer_zarr(digits, src, dst, preprocess={"scale": 0.5}, client=cluster, resume=True)
    write_array(src, digits_images(60), 20)              # the input grew
    with pytest.raises(ResumeError, match=r"inputs\.input\.shape: \[40, 1, 8, 8\] in the "):
        tf.infer_zarr(digits, src, dst, preprocess=SCALE, client=cluster, resume=True)


class InFlight(SchedulerPlugin):
    """Counts this job's tasks the scheduler holds (submitted, not yet finished)."""

    name = "test-in-flight"

    def __init__(self):
        self.live: set = set()
        self.peak = 0

    def transition(self, key, start, finish, *args, **kwargs):
        if not str(key).startswith("tf-stream-"):
            return
        if finish in ("memory", "erred", "forgotten", "released"):
            self.live.discard(key)
        else:
            self.live.add(key)
        self.peak = max(self.peak, len(self.live))


def test_window_bounds_tasks_in_flight(tmp_path, cluster, digits):
    scheduler = cluster._owned.scheduler  # the embedded scheduler runs in this process
    plugin = InFlight()
    scheduler.add_plugin(plugin, name=plugin.name)
    try:
        src = write_array(tmp_path / "src.zarr", digits_images(400), 10)
        s = tf.infer_zarr(digits, src, tmp_path / "out.zarr", preprocess=SCALE, window=3,
                          client=cluster, progress="none")
    finally:
        scheduler.remove_plugin(name=plugin.name)
    assert s.ok and s.chunks_done == 40
    assert plugin.peak == 3 and s.max_in_flight == 3     # reached, never exceeded


def test_memory_url_refused_for_worker_processes(cluster, digits):
    src = "memory://taskflow-test/src.zarr"
    write_array(src, digits_images(10), 10)
    with pytest.raises(TaskflowError, match="memory:// stores live inside one process"):
        tf.infer_zarr(digits, src, "memory://taskflow-test/out.zarr", preprocess=SCALE,
                      client=cluster)


def test_model_sent_once_per_cluster_and_job_plugins_removed(tmp_path, cluster, digits):
    def plugins(dask_scheduler):
        return [n for n in dask_scheduler.worker_plugins
                if n.startswith(("taskflow-model-", "taskflow-job-"))]

    src = write_array(tmp_path / "src.zarr", digits_images(40), 20)
    tf.infer_zarr(digits, src, tmp_path / "a.zarr", preprocess=SCALE, client=cluster,
                  progress="none")
    name = f"taskflow-model-{model_hash(digits)[:24]}"
    client = cluster.client
    sent = client.run_on_scheduler(lambda dask_scheduler: id(dask_scheduler.worker_plugins[name]))
    tf.infer_zarr(digits, src, tmp_path / "b.zarr", preprocess=SCALE, client=cluster,
                  progress="none")
    assert client.run_on_scheduler(
        lambda dask_scheduler: id(dask_scheduler.worker_plugins[name])) == sent  # not resent
    for k, model in enumerate([other_digits_model(), rgb_model()]):
        x = digits_images(20) if k == 0 else np.zeros((4, 4, 5, 3), np.uint8)
        pre = SCALE if k == 0 else {"scale": "uint8", "layout": "NHWC->NCHW"}
        tf.infer_zarr(model, write_array(tmp_path / f"s{k}.zarr", x, 10), tmp_path / f"o{k}",
                      preprocess=pre, client=cluster, progress="none")
    names = client.run_on_scheduler(plugins)
    assert name not in names and len(names) == 2             # the oldest model was evicted
    assert all(n.startswith("taskflow-model-") for n in names)  # no job plugin left behind


def test_cli_run_on_an_existing_scheduler_with_a_progress_bar(tmp_path, cluster, digits):
    images = digits_images(200)
    src = write_array(tmp_path / "src.zarr", images, 25)
    address = cluster.client.scheduler.address
    proc = run_cli(MODEL, "--input", src, "--output", str(tmp_path / "out.zarr"),
                   "--scheduler", address, "--preprocess", '{"scale": 0.0625}')
    assert proc.returncode == 0, proc.stderr
    # not a terminal: plain percent lines, each ended, none rewritten with \r
    assert "\r" not in proc.stderr and proc.stderr.endswith("\n")
    last = proc.stderr.strip("\n").splitlines()[-1]
    assert re.match(r"taskflow digits_cnn-\d{8}-\d{4}: 100% 8/8 chunks, 200 samples, "
                    r".*ETA 0:00$", last), last
    lines = proc.stdout.splitlines()
    # the dashboard page first (before any work), then the summary
    assert lines[0] == "taskflow: dashboard " + \
        cluster.client.dashboard_link.replace("/status", "/taskflow"), lines
    assert re.match(r"taskflow run digits_cnn-\d{8}-\d{4}: 200 samples in 8 chunks "
                    r"\(0 already done, 8 in all\) in [\d.]+ s, [\d,]+ samples/s; 0 failed; "
                    r"\d+ tasks$", lines[1]), lines
    assert lines[2] == f"output {tmp_path / 'out.zarr'}; dashboard " \
                       f"{cluster.client.dashboard_link}"
    (want,) = reference(digits, {"input": images}, 25, SCALE)
    assert zarr.open_group(tmp_path / "out.zarr")["output"][:].tobytes() == want.tobytes()


def test_cli_run_with_policies_and_a_performance_report(tmp_path, cluster, digits):
    src = write_array(tmp_path / "src.zarr", digits_images(100), 25)
    address = cluster.client.scheduler.address
    report = tmp_path / "report.html"
    proc = run_cli(MODEL, "--input", src, "--output", str(tmp_path / "out.zarr"),
                   "--scheduler", address, "--preprocess", '{"scale": 0.0625}',
                   "--policy", "job-priority,throughput-balancer", "--report", str(report),
                   "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert "Dask Performance Report" in report.read_text()
    active = cluster.client.run_on_scheduler(
        lambda dask_scheduler: [p.name for p in dask_scheduler.plugins["taskflow"].policies])
    assert active == ["job-priority", "throughput-balancer"]
    bad = run_cli(MODEL, "--input", src, "--output", str(tmp_path / "o2.zarr"),
                  "--scheduler", address, "--policy", "fastest-please")
    assert bad.returncode == 2 and "fastest-please" in bad.stderr
    assert "job-priority" in bad.stderr  # lists what exists
    assert not (tmp_path / "o2.zarr").exists()


@pytest.mark.parametrize("spec, text", [
    ({"layout": "NHWC->NCH"}, "expected a permutation such as 'NHWC->NCHW'"),
    ({"scale": "int8"}, "expected a number or 'uint8'"),
    ({"std": [0.5, 0.0]}, "contains 0"),
    ({"sclae": 2}, "unknown input(s) ['sclae']; the model's inputs are ['input'] (or give the "
                   "steps ['layout', 'dtype', 'scale', 'mean', 'std'] for every input)"),
    ({"input": {"sclae": 2}}, "unknown preprocessing step(s) ['sclae'] for input 'input'"),
    ({"images": {"scale": 2}}, "preprocess names unknown input(s) ['images']"),
])
def test_preprocess_spec_errors(spec, text):
    from taskflow.stream.preprocess import parse_preprocess

    with pytest.raises(InputError) as info:
        parse_preprocess(spec, ["input"])
    assert text in str(info.value)


def test_preprocess_text_and_description():
    from taskflow.stream.preprocess import parse_preprocess, preprocess_from_text

    from . import stream_helpers

    assert preprocess_from_text("tests.taskflow.stream.stream_helpers:slow") is stream_helpers.slow
    with pytest.raises(InputError, match="cannot import it"):
        preprocess_from_text("tests.taskflow.stream.stream_helpers:nope")
    spec = preprocess_from_text('{"scale": "uint8", "layout": "NHWC -> NCHW", "mean": 0.5}')
    pre = parse_preprocess(spec, ["x"])
    assert pre.describe() == {"x": {"layout": "NHWC->NCHW", "dtype": "float32",
                                    "scale": 1 / 255, "mean": [0.5]}}
    x = np.arange(2 * 2 * 3 * 3, dtype=np.uint8).reshape(2, 2, 3, 3)
    y = pre.apply({"x": x})["x"]
    assert y.shape == (2, 3, 2, 3) and y.dtype == np.float32 and y.flags.c_contiguous
    np.testing.assert_array_equal(y, x.transpose(0, 3, 1, 2) * np.float32(1 / 255) - 0.5)
    assert parse_preprocess(stream_helpers.slow, ["x"]).describe() == \
        {"*feed": "callable:tests.taskflow.stream.stream_helpers:slow"}


def test_cli_input_forms():
    from taskflow.cli import _sources

    assert _sources(["/data/images.zarr"]) == "/data/images.zarr"
    assert _sources(["s3://bucket/a=b.zarr"]) == "s3://bucket/a=b.zarr"
    assert _sources(["a=/x.zarr/a", "b=/x.zarr/b"]) == {"a": "/x.zarr/a", "b": "/x.zarr/b"}
    with pytest.raises(TaskflowError, match="give each as NAME=SRC"):
        _sources(["/x.zarr/a", "b=/x.zarr/b"])
