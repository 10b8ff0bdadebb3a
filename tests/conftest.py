"""Shared fixtures."""

from __future__ import annotations

import datetime
import signal
from typing import Any

import pytest

from malstrom.transport import TlsConfig


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsConfig:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("malstrom test CA"))
        .issuer_name(name("malstrom test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("malstrom node"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "node.pem").write_bytes(cert.public_bytes(pem))
    (d / "node.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TlsConfig(d / "node.pem", d / "node.key", d / "ca.pem")


@pytest.fixture
def ctrl_c_reaches_children() -> None:
    """Fails at once, saying why, where Ctrl-C cannot reach the processes a test starts: a
    process that ignores SIGINT (a background job of a non-interactive shell does) passes
    that on to its children, and a job it starts would then run on instead of stopping."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        pytest.fail(
            "this test process ignores SIGINT (started as `cmd &` by a non-interactive shell?), "
            "so the jobs it starts ignore Ctrl-C too; run the tests in the foreground or under "
            "job control (`set -m`)"
        )


@pytest.fixture(params=["link", "grpc"])
def carrier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: worker processes on same-host links (the default), then with every
    pipe on gRPC, as between hosts (the workers inherit ``MALSTROM_DATA_PLANE``)."""
    if request.param == "grpc":
        monkeypatch.setenv("MALSTROM_DATA_PLANE", "grpc")
    return str(request.param)


@pytest.fixture(scope="session")
def postgres_server() -> Any:
    """A PostgreSQL server for the session (scripts/test.sh installs the Debian package)."""
    from malstrom.testing._postgres import temporary_postgres

    with temporary_postgres() as dsn:
        yield dsn


@pytest.fixture
def pg(postgres_server: str) -> Any:
    """A fresh database on the session's server; yields its DSN."""
    import secrets

    import psycopg

    name = f"t_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    dsn = postgres_server.rsplit("/", 1)[0] + "/" + name
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        for (gid,) in c.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        ).fetchall():
            c.execute(f"ROLLBACK PREPARED '{gid}'")
    with psycopg.connect(postgres_server, autocommit=True) as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)")
