"""TLS through Dask's Security, with certificates this test makes: the right client connects and
computes, a client without certificates or with another CA's is refused; the embedded cluster
listens on this machine only."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from distributed.security import Security  # noqa: E402

import taskflow as tf  # noqa: E402
from taskflow.errors import TaskflowError  # noqa: E402

DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - DAY).not_valid_after(now + DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                         x509.IPAddress(__import__("ipaddress")
                                                        .ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[str, str]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


def _authority(folder: Path, ca_name: str, *members: str) -> dict[str, tuple[str, str]]:
    """A CA and certificates it signed for ``members``: name -> (cert file, key file)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    out = {"ca": _write(folder, ca_name, ca, ca_key)}
    for member in members:
        key = ec.generate_private_key(ec.SECP256R1())
        out[member] = _write(folder, f"{ca_name}-{member}", _cert(member, key, ca_name, ca_key,
                                                                  ca=False), key)
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, dict[str, tuple[str, str]]]:
    folder = tmp_path_factory.mktemp("certs")
    return {"good": _authority(folder, "taskflow-test-ca", "scheduler", "worker", "client"),
            "rogue": _authority(folder, "rogue-ca", "client")}


def _client_security(auth: dict[str, tuple[str, str]]) -> Security:
    crt, key = auth["client"]
    return Security(tls_ca_file=auth["ca"][0], tls_client_cert=crt, tls_client_key=key,
                    require_encryption=True)


@pytest.fixture(scope="module")
def tls_cluster(certs):
    good = certs["good"]
    server = Security(tls_ca_file=good["ca"][0], tls_scheduler_cert=good["scheduler"][0],
                      tls_scheduler_key=good["scheduler"][1], tls_worker_cert=good["worker"][0],
                      tls_worker_key=good["worker"][1], tls_client_cert=good["client"][0],
                      tls_client_key=good["client"][1], require_encryption=True)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://",
                      host="127.0.0.1", security=server, dashboard_address=":0") as cluster:
        yield cluster


def test_the_right_certificates_connect_and_compute(tls_cluster, certs):
    assert tls_cluster.scheduler_address.startswith("tls://")
    with tf.Cluster(tls_cluster.scheduler_address, security=_client_security(certs["good"]),
                    quiet=True, connect_timeout=20) as cluster:
        net = tf.nn.Sequential([tf.nn.Dense(4, 3)], input_shape=(4,))
        model = net.to_model()
        x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
        import dask.array as da

        got = cluster.client.compute(model.predict(da.from_array(x, chunks=3))).result()
        np.testing.assert_allclose(got, model.run(None, {"input": x})[0], rtol=1e-6)


def test_no_certificates_is_refused_with_a_hint(tls_cluster):
    with pytest.raises(TaskflowError, match="is a tls:// address: pass the certificates"):
        tf.Cluster(tls_cluster.scheduler_address, quiet=True, connect_timeout=3)


def test_another_authority_is_refused(tls_cluster, certs):
    with pytest.raises(TaskflowError, match="same CA"):
        tf.Cluster(tls_cluster.scheduler_address, security=_client_security(certs["rogue"]),
                   quiet=True, connect_timeout=3)


def test_embedded_cluster_with_tls_refuses_plain_clients():
    with tf.Cluster(n_workers=1, threads_per_worker=1, security=True, quiet=True) as cluster:
        address = cluster.client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        assert cluster.client.submit(sum, [1, 2]).result() == 3
        with pytest.raises((OSError, TimeoutError)):  # plain TCP to the TLS listener
            Client(address.replace("tls://", "tcp://"), timeout=2)
        with pytest.raises(TaskflowError, match="pass the certificates"):
            tf.Cluster(address, quiet=True)


def test_embedded_cluster_listens_on_this_machine_only():
    with tf.Cluster(n_workers=1, threads_per_worker=1, quiet=True) as cluster:
        info = cluster.client.scheduler_info()
        assert cluster.client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in info["workers"])
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")


def test_cli_tls_options(tls_cluster, certs, tmp_path):
    import zarr

    good = certs["good"]
    net = tf.nn.Sequential([tf.nn.Dense(4, 3)], input_shape=(4,))
    path = tmp_path / "m.onnx"
    net.to_model().save(str(path))
    src = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=(8, 4), chunks=(4, 4),
                          dtype="float32")
    src[:] = np.random.default_rng(1).standard_normal((8, 4))
    cmd = [sys.executable, "-m", "taskflow.cli", "run", str(path), "-i", str(tmp_path / "in.zarr"),
           "--scheduler", tls_cluster.scheduler_address, "--progress", "none"]
    plain = subprocess.run([*cmd, "-o", str(tmp_path / "a.zarr"), "--connect-timeout", "3"],
                           capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "--tls-ca-file" in plain.stderr
    ok = subprocess.run([*cmd, "-o", str(tmp_path / "b.zarr"), "--tls-ca-file", good["ca"][0],
                         "--tls-cert", good["client"][0], "--tls-key", good["client"][1]],
                        capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr
    assert zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["output"].shape == (8, 3)
