"""Reaching a Dask scheduler: TLS certificates (Dask's ``Security``) and a bounded wait.

:class:`taskflow.Cluster` uses these for both of its cases: an embedded cluster that listens on
``tls://`` and a running cluster given by address.
"""

from __future__ import annotations

from typing import Any

from distributed import Client

from taskflow.errors import TaskflowError

#: Seconds to wait for a scheduler given by address: long enough for a loaded machine's
#: handshake, short enough that a wrong address is reported before the user gives up.
CONNECT_TIMEOUT = 10.0


def client_security(security: Any) -> Any:
    if security is None or security is False:
        return None
    from distributed.security import Security

    if security is True:
        raise TaskflowError("security=True makes certificates for a cluster started here; to "
                            "connect to a running one, pass its certificates as "
                            "distributed.security.Security(tls_ca_file=..., tls_client_cert=..., "
                            "tls_client_key=..., require_encryption=True)")
    if not isinstance(security, Security):
        raise TaskflowError(f"security={security!r}; expected a distributed.security.Security, "
                            "True (self-signed certificates for a cluster started here) or None")
    return security


def local_security(security: Any, processes: bool) -> Any:
    if security is None or security is False:
        return None
    if not processes:
        raise TaskflowError("security= with processes=False: in-process workers talk over "
                            "inproc://, which never leaves this process; TLS applies to worker "
                            "processes (drop processes=False)")
    if security is True:
        from distributed.security import Security

        try:
            return Security.temporary()
        except ImportError as exc:
            raise TaskflowError("security=True makes self-signed certificates with the "
                                "'cryptography' package: pip install cryptography") from exc
    return client_security(security)


def connect(address: str, security: Any, timeout: float) -> Client:
    """A client of the scheduler at ``address``, or a TaskflowError that says why not."""
    if address.startswith("tls://") and security is None:
        raise TaskflowError(f"the scheduler at {address!r} is a tls:// address: pass the "
                            "certificates (security=distributed.security.Security(...), or "
                            "--tls-ca-file/--tls-cert/--tls-key)")
    try:
        return Client(address, security=security, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        hint = ""
        if security is not None:
            hint = ("; if it does listen there, check that its certificates and the ones "
                    "given here come from the same CA")
        raise TaskflowError(f"could not connect to the Dask scheduler at {address!r} within "
                            f"{timeout:g} s ({type(exc).__name__}: {exc}){hint}") from exc
