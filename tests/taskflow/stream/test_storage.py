"""``infer_zarr`` with fsspec storage options, against a real local object store: moto's S3
server (a thread of this process, with IAM authentication on) and a real 2-worker
LocalCluster (processes), so the options must reach the client's checks, the manifest and every
worker. Also ``file://`` URLs, and ``taskflow run --storage-options``."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import urllib.request

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.cli import main
from taskflow.dask.threads import detect_cores
from taskflow.errors import TaskflowError
from taskflow.stream.stores import StoreNotFoundError

from .stream_helpers import ROOT, digits_images, digits_model, reference, write_array

moto_server = pytest.importorskip("moto.server", reason="needs moto with flask (the test extra)")
pytest.importorskip("s3fs", reason="needs s3fs (the test extra)")
boto3 = pytest.importorskip("boto3", reason="needs boto3 (installed with moto)")

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")]
SCALE = {"scale": 1 / 16}
MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
BUCKET = "taskflow-data"
ROWS, CHUNK = 200, 50


class S3:
    """The server's endpoint, a user's storage options, and a source written there."""

    def __init__(self, endpoint: str, key: str, secret: str):
        self.endpoint, self.key, self.secret = endpoint, key, secret
        self.options = {"key": key, "secret": secret,
                        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
        self.images = digits_images(ROWS)
        self.source = f"s3://{BUCKET}/inputs/digits.zarr"
        arr = zarr.open_array(self.source, mode="w", shape=self.images.shape,
                              chunks=(CHUNK, *self.images.shape[1:]), dtype=self.images.dtype,
                              storage_options=self.options)
        arr[:] = self.images

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options, skip_instance_cache=True)

    def output(self, url: str) -> np.ndarray:
        return zarr.open_group(url, mode="r", storage_options=self.options)["output"][:]


def _reset_auth(endpoint: str, count: str) -> None:
    """Moto checks credentials (and IAM policies) once ``count`` more actions have run."""
    request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                     method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    admin = {"endpoint_url": endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "admin", "aws_secret_access_key": "admin"}
    iam = boto3.client("iam", **admin)
    iam.create_user(UserName="taskflow")
    iam.put_user_policy(UserName="taskflow", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    access = iam.create_access_key(UserName="taskflow")["AccessKey"]
    boto3.client("s3", **admin).create_bucket(Bucket=BUCKET)
    _reset_auth(endpoint, "0")  # from now on a wrong secret is refused
    try:
        yield S3(endpoint, access["AccessKeyId"], access["SecretAccessKey"])
    finally:
        _reset_auth(endpoint, "inf")
        server.stop()


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


@pytest.fixture(scope="module")
def digits():
    return digits_model()


@pytest.fixture(scope="module")
def want(s3, digits):
    return reference(digits, {"input": s3.images}, CHUNK, SCALE)[0]


def test_s3_to_a_new_prefix_matches_model_run_and_keeps_secrets_out(s3, cluster, digits,
                                                                      want):
    target = f"s3://{BUCKET}/runs/2026/new/out.zarr"        # a prefix that does not exist yet
    s = tf.infer_zarr(digits, s3.source, target, preprocess=SCALE, client=cluster,
                      progress="none", storage_options=s3.options)
    assert s.ok and (s.chunks_done, s.samples) == (ROWS // CHUNK, ROWS)
    assert s3.output(target).tobytes() == want.tobytes()
    fs = s3.fs()
    assert len(fs.ls(f"{BUCKET}/runs/2026/new/out.zarr/.taskflow/done/c")) == ROWS // CHUNK
    stored = "".join(fs.cat(p).decode() for p in fs.find(f"{BUCKET}/runs")
                     if p.endswith("zarr.json"))                # attributes and the manifest
    shown = f"{s}{s.to_dict()}{stored}"
    assert s3.source in stored and s3.secret not in shown and s3.key not in shown


def test_s3_resume_lists_markers_and_ignores_options_in_the_identity(s3, cluster, digits,
                                                                     want):
    target = f"s3://{BUCKET}/runs/resume.zarr"
    tf.infer_zarr(digits, s3.source, target, preprocess=SCALE, client=cluster,
                  progress="none", storage_options=s3.options)
    fs = s3.fs()  # as if a job had been killed: chunks 1 and 3 neither marked nor written
    fs.rm([f"{BUCKET}/runs/resume.zarr/.taskflow/done/c/{k}" for k in (1, 3)])
    out = zarr.open_group(target, mode="r+", storage_options=s3.options)["output"]
    out[CHUNK:2 * CHUNK] = 0
    out[3 * CHUNK:4 * CHUNK] = 0
    other = {**s3.options, "use_listings_cache": False}  # other options, same job
    s = tf.infer_zarr(digits, s3.source, target, preprocess=SCALE, client=cluster,
                      progress="none", resume=True, source_options=s3.options,
                      target_options=other)
    assert s.ok and (s.chunks_done, s.chunks_skipped) == (2, 2)
    assert s3.output(target).tobytes() == want.tobytes()


@pytest.mark.parametrize("side", ["source", "target"])
def test_wrong_secret_refused_before_any_work(s3, digits, side):
    bad = {**s3.options, "secret": "not-the-secret"}
    options = {"source_options": s3.options, "target_options": s3.options, f"{side}_options": bad}
    target = f"s3://{BUCKET}/runs/denied-{side}.zarr"
    # no scheduler listens there: any attempt to start the job would fail differently
    with pytest.raises(TaskflowError, match=rf"^{side} 's3://.*': access denied \("
                       r"PermissionError: .*storage_options") as err:
        tf.infer_zarr(digits, s3.source, target, preprocess=SCALE, client="tcp://127.0.0.1:9",
                      progress="none", **options)
    assert "not-the-secret" not in str(err.value) and s3.secret not in str(err.value)
    assert not s3.fs().exists(f"{BUCKET}/runs/denied-{side}.zarr")


def test_missing_bucket_named(s3, digits):
    with pytest.raises(StoreNotFoundError, match="^target 's3://no-such-bucket/out.zarr': its "
                                                 "bucket 'no-such-bucket' does not exist"):
        tf.infer_zarr(digits, s3.source, "s3://no-such-bucket/out.zarr", preprocess=SCALE,
                      client="tcp://127.0.0.1:9", storage_options=s3.options)
    with pytest.raises(StoreNotFoundError, match="^source 's3://no-such-bucket/in.zarr': its "
                                                 "bucket 'no-such-bucket' does not exist"):
        tf.infer_zarr(digits, "s3://no-such-bucket/in.zarr", f"s3://{BUCKET}/x.zarr",
                      client="tcp://127.0.0.1:9", storage_options=s3.options)
    with pytest.raises(StoreNotFoundError, match=rf"^source 's3://{BUCKET}/nothing.zarr' does "
                                                 "not exist$"):
        tf.infer_zarr(digits, f"s3://{BUCKET}/nothing.zarr", f"s3://{BUCKET}/x.zarr",
                      client="tcp://127.0.0.1:9", storage_options=s3.options)


def test_file_urls_in_and_out(tmp_path, s3, cluster, digits, want):
    src = write_array(tmp_path / "in.zarr", s3.images, CHUNK)
    target = tmp_path / "not" / "yet" / "out.zarr"               # parents created
    # one options dict for an s3:// source would not reach local paths (file:// included)
    s = tf.infer_zarr(digits, f"file://{src}", f"file://{target}", preprocess=SCALE,
                      client=cluster, progress="none", storage_options=s3.options)
    assert s.ok and s.target == str(target)
    assert zarr.open_group(target, mode="r")["output"][:].tobytes() == want.tobytes()
    again = tf.infer_zarr(digits, src, target, preprocess=SCALE, client=cluster,
                          progress="none", resume=True)            # same job, as a path
    assert again.ok and again.chunks_skipped == ROWS // CHUNK and again.chunks_done == 0
    # an S3 source into a file:// target: per-side options
    s = tf.infer_zarr(digits, s3.source, f"file://{tmp_path}/from-s3.zarr", preprocess=SCALE,
                      client=cluster, progress="none", source_options=s3.options)
    assert s.ok
    assert zarr.open_group(tmp_path / "from-s3.zarr")["output"][:].tobytes() == want.tobytes()


def test_cli_storage_options(tmp_path, s3, cluster, want):
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps(s3.options))
    target = f"s3://{BUCKET}/runs/cli.zarr"
    out, err = io.StringIO(), io.StringIO()  # in process: the options' path, not the CLI's
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", MODEL, "-i", s3.source, "-o", target, "--scheduler",
                     cluster.client.scheduler.address, "--preprocess", '{"scale": 0.0625}',
                     "--progress", "none", "--storage-options", f"@{creds}"])
    assert code == 0, err.getvalue()
    assert ": 200 samples in 4 chunks (0 already done, 4 in all)" in out.getvalue()
    assert s3.output(target).tobytes() == want.tobytes()
    assert s3.secret not in out.getvalue() + err.getvalue()


@pytest.mark.parametrize("flag, value, text", [
    ("--storage-options", '{"secret": "hunter2", }',
     "--storage-options: its JSON is not valid JSON (Expecting property name"),
    ("--input-storage-options", '["hunter2"]',
     "--input-storage-options: its JSON is a JSON list; expected an object"),
    ("--output-storage-options", "@/no/such/hunter2.json",
     "--output-storage-options @FILE: cannot read '/no/such/hunter2.json' (No such file"),
])
def test_cli_storage_options_errors_in_one_line(flag, value, text):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", MODEL, "-i", "in.zarr", "-o", "out.zarr", flag, value])
    assert code == 2 and err.getvalue().startswith(f"taskflow run: error: {text}")
    assert err.getvalue().count("\n") == 1
    if not value.startswith("@"):
        assert "hunter2" not in err.getvalue()


def test_cli_wrong_secret_one_line_without_secrets(tmp_path, s3):
    bad = json.dumps({**s3.options, "secret": "hunter2"})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["run", MODEL, "-i", s3.source, "-o", f"s3://{BUCKET}/runs/never.zarr",
                     "--storage-options", bad])
    assert code == 2 and err.getvalue().count("\n") == 1
    assert err.getvalue().startswith(f"taskflow run: error: source {s3.source!r}: access denied")
    assert "hunter2" not in err.getvalue() and s3.key not in err.getvalue()
