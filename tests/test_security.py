"""The daemon's doors: TLS and mutual TLS on TCP, file modes, and errors that keep its internals.

Certificates come from the `openssl` command, made afresh for each run: a CA
with a server certificate for 127.0.0.1 and localhost and a client certificate,
and an unrelated CA with a client certificate of its own, for the refusals.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import secrets
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_IMODE

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from support.daemon import DaemonProcess, contentd_command, running_daemon, start_daemon
from support.grpc_client import (
    CALL_TIMEOUT,
    WriteStream,
    commit,
    content_stub,
    namespaced,
    poll,
    stat,
    write,
)
from support.tools import require_tool

from contentd import errdefs
from contentd.client import RemoteStore, TLSConfig
from contentd.content import digest_of, open_store, write_blob
from contentd.daemon._tls import is_loopback
from contentd.errdefs._grpc import STATUS_DETAILS_KEY
from contentd.proto import content_pb2 as api
from contentd.proto import content_pb2_grpc

Code = grpc.StatusCode
#: A channel of its own for every client, so no test reuses another's TLS session.
FRESH_CHANNEL = (("grpc.use_local_subchannel_pool", 1), ("grpc.enable_http_proxy", 0))
#: Refused connections fail at once; this only bounds a test that would hang.
REFUSAL_TIMEOUT = 10.0
PLAINTEXT_WARNING = "serving plaintext on"


# Certificates


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its unencrypted private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate; another CA with a client (`stranger`)."""

    ca: Identity
    server: Identity
    client: Identity
    other_ca: Identity
    stranger: Identity


def _openssl(*args: str) -> None:
    subprocess.run(
        [require_tool("openssl", "openssl"), *args], check=True, capture_output=True, timeout=60
    )


def _key_options() -> list[str]:
    # EC keys: generated in milliseconds, where RSA takes a noticeable while.
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ca(directory: Path, name: str) -> Identity:
    made = Identity(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl(
        "req", "-x509", *_key_options(), "-keyout", str(made.key), "-out", str(made.cert),
        "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return made


def issue(directory: Path, name: str, ca: Identity, extensions: str) -> Identity:
    """A certificate for `name` signed by `ca`, with `extensions` (openssl's extfile syntax)."""
    made = Identity(directory / f"{name}.pem", directory / f"{name}.key")
    request = directory / f"{name}.csr"
    extfile = directory / f"{name}.ext"
    extfile.write_text(extensions)
    _openssl(
        "req", "-new", *_key_options(), "-keyout", str(made.key), "-out", str(request),
        "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-set_serial", str(secrets.randbits(63)), "-days", "2", "-out", str(made.cert),
        "-extfile", str(extfile),
    )  # fmt: skip
    return made


SERVER_EXTENSIONS = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
CLIENT_EXTENSIONS = "extendedKeyUsage=clientAuth\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    other_ca = make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        server=issue(directory, "server", ca, SERVER_EXTENSIONS),
        client=issue(directory, "client", ca, CLIENT_EXTENSIONS),
        other_ca=other_ca,
        stranger=issue(directory, "stranger", other_ca, CLIENT_EXTENSIONS),
    )


# Daemons on TCP


@dataclass
class TcpDaemon:
    process: DaemonProcess
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def serve_tcp(root: Path, host: str, *flags: str) -> TcpDaemon:
    """A daemon on a unix socket and on a free TCP port of `host`, once it serves both."""
    process = start_daemon(root, "--address", f"{host}:0", *flags)
    found: list[str] = []

    def port_logged() -> bool:
        found[:] = re.findall(rf"serving on {re.escape(host)}:(\d+)", process.logged())
        return bool(found)

    if not poll(port_logged, timeout=10):
        process.stop()
        raise AssertionError(f"no TCP address logged:\n{process.logged()}")
    return TcpDaemon(process, int(found[0]))


@contextmanager
def serving_tcp(root: Path, host: str, *flags: str) -> Iterator[TcpDaemon]:
    daemon = serve_tcp(root, host, *flags)
    try:
        yield daemon
    finally:
        daemon.process.stop()


def tls_flags(server: Identity, client_ca: Identity | None = None) -> list[str]:
    flags = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if client_ca is not None:
        flags += ["--tls-ca", str(client_ca.cert)]
    return flags


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TcpDaemon]:
    root = tmp_path_factory.mktemp("tls") / "root"
    with serving_tcp(root, "127.0.0.1", *tls_flags(pki.server)) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def mtls_daemon(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TcpDaemon]:
    root = tmp_path_factory.mktemp("mtls") / "root"
    with serving_tcp(root, "127.0.0.1", *tls_flags(pki.server, client_ca=pki.ca)) as daemon:
        yield daemon


def remote(
    address: str,
    *,
    ca: Identity | None = None,
    client: Identity | None = None,
    server_name: str | None = None,
    timeout: float = CALL_TIMEOUT,
) -> RemoteStore:
    tls = None
    if ca is not None or client is not None:
        tls = TLSConfig(
            ca=ca.cert if ca else None,
            cert=client.cert if client else None,
            key=client.key if client else None,
            server_name=server_name,
        )
    namespace = f"t-{uuid.uuid4().hex[:12]}"
    return RemoteStore(address, namespace, timeout=timeout, channel_options=FRESH_CHANNEL, tls=tls)


def round_trip(store: RemoteStore) -> None:
    """Ingest a blob and read it back through `store`."""
    data = f"over TLS into {store.namespace}".encode()
    digest = write_blob(store, "round-trip", io.BytesIO(data), len(data), digest_of(data))
    assert digest == digest_of(data)
    with store.reader_at(digest) as blob:
        assert blob.read() == data


def refused(store: RemoteStore) -> None:
    """Make a call through `store` that the connection must refuse (Unavailable)."""
    with store, pytest.raises(errdefs.Unavailable):
        store.info(digest_of(b"anything"))


# TLS


def test_tls_client_ingests_and_reads_a_blob(tls_daemon: TcpDaemon, pki: Pki) -> None:
    with remote(tls_daemon.address, ca=pki.ca) as store:
        round_trip(store)


def test_tls_client_reaches_the_daemon_by_its_name(tls_daemon: TcpDaemon, pki: Pki) -> None:
    with remote(f"localhost:{tls_daemon.port}", ca=pki.ca) as store:
        round_trip(store)


def test_server_name_is_what_the_daemons_certificate_must_name(
    tls_daemon: TcpDaemon, pki: Pki
) -> None:
    with remote(tls_daemon.address, ca=pki.ca, server_name="localhost") as store:
        round_trip(store)
    refused(
        remote(
            tls_daemon.address,
            ca=pki.ca,
            server_name="elsewhere.example",
            timeout=REFUSAL_TIMEOUT,
        )
    )


def test_plaintext_client_is_refused_by_a_tls_port(tls_daemon: TcpDaemon) -> None:
    refused(remote(tls_daemon.address, timeout=REFUSAL_TIMEOUT))


def test_client_trusting_another_ca_is_refused(tls_daemon: TcpDaemon, pki: Pki) -> None:
    refused(remote(tls_daemon.address, ca=pki.other_ca, timeout=REFUSAL_TIMEOUT))


def test_unix_socket_stays_plaintext_beside_tls(tls_daemon: TcpDaemon) -> None:
    with remote(tls_daemon.process.address) as store:
        round_trip(store)


# Mutual TLS


def test_mtls_client_with_a_certificate_from_the_ca_works(mtls_daemon: TcpDaemon, pki: Pki) -> None:
    with remote(mtls_daemon.address, ca=pki.ca, client=pki.client) as store:
        round_trip(store)


def test_mtls_client_without_a_certificate_is_refused(mtls_daemon: TcpDaemon, pki: Pki) -> None:
    refused(remote(mtls_daemon.address, ca=pki.ca, timeout=REFUSAL_TIMEOUT))


def test_mtls_client_with_a_certificate_from_another_ca_is_refused(
    mtls_daemon: TcpDaemon, pki: Pki
) -> None:
    refused(remote(mtls_daemon.address, ca=pki.ca, client=pki.stranger, timeout=REFUSAL_TIMEOUT))


# The registry face serves HTTPS with the same files.


def _registry_get(url: str, context: ssl.SSLContext | None) -> int:
    with urllib.request.urlopen(f"{url}/v2/", context=context, timeout=10) as answer:
        return int(answer.status)


def _https_context(
    pki: Pki, client: Identity | None = None, *, ca: Identity | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str((ca or pki.ca).cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def test_registry_serves_https_with_the_daemons_certificate(tmp_path: Path, pki: Pki) -> None:
    with running_daemon(tmp_path / "root", "--http", "127.0.0.1:0", *tls_flags(pki.server)) as d:
        assert d.http_url.startswith("https://127.0.0.1:")
        assert _registry_get(d.http_url, _https_context(pki)) == 200
        plain = d.http_url.replace("https://", "http://")
        with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
            _registry_get(plain, None)


def test_registry_with_tls_ca_refuses_clients_without_a_certificate(
    tmp_path: Path, pki: Pki
) -> None:
    flags = tls_flags(pki.server, client_ca=pki.ca)
    with running_daemon(tmp_path / "root", "--http", "127.0.0.1:0", *flags) as d:
        assert _registry_get(d.http_url, _https_context(pki, client=pki.client)) == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _registry_get(d.http_url, _https_context(pki))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _registry_get(d.http_url, _https_context(pki, client=pki.stranger))


def test_tls_config_takes_a_client_certificate_only_with_its_key(pki: Pki) -> None:
    with pytest.raises(errdefs.InvalidArgument):
        TLSConfig(ca=pki.ca.cert, cert=pki.client.cert)


def test_tls_config_refuses_a_key_of_another_certificate(pki: Pki) -> None:
    config = TLSConfig(ca=pki.ca.cert, cert=pki.client.cert, key=pki.stranger.key)
    with pytest.raises(errdefs.InvalidArgument, match="do not belong together"):
        RemoteStore("127.0.0.1:1", tls=config)


# Certificates that change


def rotate(current: Identity, new: Identity, *, key: bool = True, cert: bool = True) -> None:
    """Put `new`'s files where `current`'s are, each in one rename, as deployment tools do."""
    for wanted, source, target in ((cert, new.cert, current.cert), (key, new.key, current.key)):
        if wanted:
            staged = target.with_suffix(".new")
            shutil.copyfile(source, staged)
            os.replace(staged, target)


def test_a_replaced_certificate_serves_new_connections(tmp_path: Path, pki: Pki) -> None:
    served = Identity(tmp_path / "served.pem", tmp_path / "served.key")
    rotate(served, pki.server)
    successor = issue(tmp_path, "successor", pki.other_ca, SERVER_EXTENSIONS)
    with serving_tcp(tmp_path / "root", "127.0.0.1", *tls_flags(served)) as daemon:
        with remote(daemon.address, ca=pki.ca) as store:
            round_trip(store)
        # Half a rotation (a new certificate beside the old key) keeps the old pair.
        rotate(served, successor, key=False)
        with remote(daemon.address, ca=pki.ca) as store:
            round_trip(store)
        rotate(served, successor, cert=False)
        with remote(daemon.address, ca=pki.other_ca) as store:
            round_trip(store)
        refused(remote(daemon.address, ca=pki.ca, timeout=REFUSAL_TIMEOUT))
    # Read once the daemon has stopped: its log reaches the test through a pipe's reader.
    log = daemon.process.logged()
    assert "keeping the current TLS certificate" in log
    assert "reloaded the TLS certificate" in log


def test_the_registry_serves_a_replaced_certificate_to_new_connections(
    tmp_path: Path, pki: Pki
) -> None:
    served = Identity(tmp_path / "served.pem", tmp_path / "served.key")
    rotate(served, pki.server)
    successor = issue(tmp_path, "successor", pki.other_ca, SERVER_EXTENSIONS)
    with running_daemon(tmp_path / "root", "--http", "127.0.0.1:0", *tls_flags(served)) as d:
        assert _registry_get(d.http_url, _https_context(pki)) == 200
        # Half a rotation (a new certificate beside the old key) keeps the old pair.
        rotate(served, successor, key=False)
        assert _registry_get(d.http_url, _https_context(pki)) == 200
        rotate(served, successor, cert=False)
        assert _registry_get(d.http_url, _https_context(pki, ca=pki.other_ca)) == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError)):
            _registry_get(d.http_url, _https_context(pki))
    # Read once the daemon has stopped: its log reaches the test through a pipe's reader.
    log = d.logged()
    assert "keeping the current TLS certificate" in log
    assert "reloaded the TLS certificate" in log


def test_the_registry_follows_a_replaced_client_ca(tmp_path: Path, pki: Pki) -> None:
    trusted = Identity(tmp_path / "clients.pem", tmp_path / "unused.key")
    rotate(trusted, pki.ca, key=False)
    flags = tls_flags(pki.server, client_ca=trusted)
    with running_daemon(tmp_path / "root", "--http", "127.0.0.1:0", *flags) as d:
        assert _registry_get(d.http_url, _https_context(pki, client=pki.client)) == 200
        rotate(trusted, pki.other_ca, key=False)
        # The old CA is no longer trusted, not merely joined by the new one.
        assert _registry_get(d.http_url, _https_context(pki, client=pki.stranger)) == 200
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _registry_get(d.http_url, _https_context(pki, client=pki.client))


# Plaintext on TCP


def test_plaintext_on_every_interface_warns(tmp_path: Path) -> None:
    with serving_tcp(tmp_path / "root", "0.0.0.0") as daemon:
        warnings = [line for line in daemon.process.log if PLAINTEXT_WARNING in line]
    assert len(warnings) == 1
    assert re.search(r"WARNING .*serving plaintext on 0\.0\.0\.0:\d+: anyone", warnings[0])
    assert "--tls-cert" in warnings[0]


def test_plaintext_on_loopback_does_not_warn(tmp_path: Path) -> None:
    # The warning would come before the line serve_tcp waits for.
    with serving_tcp(tmp_path / "root", "127.0.0.1") as daemon:
        assert PLAINTEXT_WARNING not in daemon.process.logged()


def test_tls_does_not_warn(tls_daemon: TcpDaemon) -> None:
    assert PLAINTEXT_WARNING not in tls_daemon.process.logged()


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:1", True),
        ("127.8.9.10:1", True),
        ("localhost:1", True),
        ("[::1]:1", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        (":1", False),
        ("192.0.2.7:1", False),
        ("store.example:1", False),
    ],
)
def test_loopback_addresses_are_those_only_this_machine_reaches(
    address: str, loopback: bool
) -> None:
    assert is_loopback(address) is loopback


# The command line


def run_contentd(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("CONTENTD_")}
    return subprocess.run(
        [*contentd_command(), *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, **(env or {})},
    )


def test_cli_speaks_mutual_tls_with_options(mtls_daemon: TcpDaemon, pki: Pki) -> None:
    options = [
        "--address", mtls_daemon.address, "-n", "cli-options",
        "--tls-ca", str(pki.ca.cert),
        "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key),
    ]  # fmt: skip
    data = b"ingested by the command line over mutual TLS"
    ingested = run_contentd(*options, "ingest", "from-cli", stdin=data)
    assert ingested.returncode == 0, ingested.stderr
    assert ingested.stdout.strip() == digest_of(data)
    listed = run_contentd(*options, "ls", "-q")
    assert listed.stdout.split() == [digest_of(data)]


def test_cli_takes_tls_from_the_environment(mtls_daemon: TcpDaemon, pki: Pki) -> None:
    with remote(mtls_daemon.address, ca=pki.ca, client=pki.client) as store:
        data = b"read by the command line over mutual TLS"
        digest = store.put("for-cli", data)
        namespace = store.namespace
    environment = {
        "CONTENTD_ADDRESS": mtls_daemon.address,
        "CONTENTD_NAMESPACE": namespace,
        "CONTENTD_TLS_CA": str(pki.ca.cert),
        "CONTENTD_TLS_CERT": str(pki.client.cert),
        "CONTENTD_TLS_KEY": str(pki.client.key),
    }
    fetched = run_contentd("get", digest, env=environment)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.encode() == data


def test_cli_trusting_another_ca_says_why_it_cannot_connect(
    tls_daemon: TcpDaemon, pki: Pki
) -> None:
    failed = run_contentd(
        "--address", tls_daemon.address, "--tls-ca", str(pki.other_ca.cert), "--timeout", "1", "ls"
    )
    assert failed.returncode == 11
    assert f"contentd: no daemon answering at {tls_daemon.address}" in failed.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in failed.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tls-cert", "{client.cert}"], "give --tls-cert and --tls-key together"),
        (["--tls-key", "{client.key}"], "give --tls-cert and --tls-key together"),
        (["--root", "{root}", "--tls-ca", "{ca.cert}"], "not --root"),
        (["--tls-ca", "{missing}"], "does not exist"),
    ],
)
def test_cli_refuses_tls_options_that_do_not_fit(
    tmp_path: Path, pki: Pki, options: list[str], message: str
) -> None:
    names = {"client": pki.client, "ca": pki.ca, "root": tmp_path, "missing": tmp_path / "no.pem"}
    failed = run_contentd(*(option.format(**names) for option in options), "ls")
    assert failed.returncode == 2
    assert message in failed.stderr
    assert "Traceback" not in failed.stderr


SERVE_REFUSALS = [
    (["--tls-key", "{server.key}"], "--tls-key needs --tls-cert"),
    (["--tls-ca", "{ca.cert}"], "--tls-ca needs --tls-cert"),
    (["--tls-cert", "{server.cert}"], "--tls-cert needs --tls-key"),
    (["--tls-cert", "{missing}", "--tls-key", "{server.key}"], "does not exist"),
    (["--tls-cert", "{directory}", "--tls-key", "{server.key}"], "is a directory"),
    (["--tls-cert", "{server.key}", "--tls-key", "{server.key}"], "no PEM certificate in it"),
    (["--tls-cert", "{server.cert}", "--tls-key", "{server.cert}"], "no PEM private key in it"),
    (["--tls-cert", "{server.cert}", "--tls-key", "{client.key}"], "does not belong to"),
    (
        ["--tls-cert", "{server.cert}", "--tls-key", "{server.key}", "--tls-ca", "{server.key}"],
        "no PEM certificate in it",
    ),
]


@pytest.mark.parametrize(("options", "message"), SERVE_REFUSALS)
def test_serve_refuses_tls_flags_that_do_not_fit(
    tmp_path: Path, pki: Pki, options: list[str], message: str
) -> None:
    names = {
        "server": pki.server,
        "client": pki.client,
        "ca": pki.ca,
        "missing": tmp_path / "no.pem",
        "directory": tmp_path,
    }
    failed = run_contentd(
        "serve",
        "--root",
        str(tmp_path / "root"),
        "--address",
        "127.0.0.1:0",
        *(option.format(**names) for option in options),
    )
    assert failed.returncode == 2
    error_lines = [line for line in failed.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error_lines) == 1
    assert message in error_lines[0]
    assert "Traceback" not in failed.stderr
    assert "serving on" not in failed.stderr


def test_serve_refuses_tls_without_a_tcp_address(tmp_path: Path, pki: Pki) -> None:
    failed = run_contentd(
        "serve",
        "--root",
        str(tmp_path / "root"),
        "--address",
        f"unix://{tmp_path / 'contentd.sock'}",
        *tls_flags(pki.server),
    )
    assert failed.returncode == 2
    assert "--tls-cert applies to TCP addresses (host:port, or --http); none given" in failed.stderr


# File modes


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return S_IMODE(path.stat().st_mode)


def assert_private_store(root: Path) -> None:
    """What no one but the store's owner may read or change, whatever the umask was."""
    assert mode(root) == 0o700
    directories = [path for path in root.rglob("*") if path.is_dir()]
    assert {path.relative_to(root).as_posix() for path in directories} >= {
        "blobs",
        "blobs/sha256",
        "ingest",
        "trash",
    }
    for directory in directories:
        assert mode(directory) & 0o022 == 0, directory
    blobs = list((root / "blobs" / "sha256").iterdir())
    assert len(blobs) == 2
    for blob in blobs:
        assert mode(blob) == 0o444
    ingests = list((root / "ingest").iterdir())
    assert len(ingests) == 2  # one ingest's bytes and its lock
    for path in ingests:
        assert mode(path) == 0o600, path
    databases = list(root.glob("metadata.db*"))
    assert root / "metadata.db" in databases
    for database in databases:
        assert mode(database) == 0o600, database


def test_daemon_creates_a_private_store_under_any_umask(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with umask(0):
        daemon = start_daemon(root)
    try:
        assert mode(Path(daemon.socket)) == 0o660
        with content_stub(daemon.address) as stub:
            with WriteStream(stub, "default") as stream:
                stream.send(write("streamed", b"streamed bytes"))
                stream.send(commit("streamed", offset=len(b"streamed bytes")))
            with WriteStream(stub, "default") as stream:
                stream.send(commit("in-one", data=b"in one message"))
            with WriteStream(stub, "default") as stream:
                stream.send(write("unfinished", b"kept for later"))
                stream.close()
                assert list(stream.call) == []
        assert_private_store(root)
    finally:
        daemon.stop()


def test_daemonless_store_is_private_under_any_umask(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with umask(0), open_store(root) as store:
        with store.writer("streamed") as writer:
            writer.write(b"streamed bytes")
            writer.commit()
        store.put("in-one", b"in one message")
        with store.writer("unfinished") as writer:
            writer.write(b"kept for later")
        assert_private_store(root)


# Errors keep the daemon's internals to themselves


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    with running_daemon(tmp_path_factory.mktemp("leaks") / "root") as running:
        yield running


def everything_said(error: grpc.RpcError) -> list[str]:
    """Every word a failed call carries: details, trailing metadata, the ErrorInfo inside."""
    said = [error.details() or ""]
    for key, value in error.trailing_metadata() or ():
        said.append(key)
        if key != STATUS_DETAILS_KEY:
            said.append(value if isinstance(value, str) else value.decode("utf-8", "replace"))
            continue
        status = status_pb2.Status.FromString(value)
        said.append(status.message)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            assert detail.Unpack(info)
            said += [info.reason, info.domain, *info.metadata.keys(), *info.metadata.values()]
    return said


def failure(call: Callable[[], object], code: grpc.StatusCode, root: Path) -> errdefs.ContentdError:
    """Make a call that must fail with `code`, check it tells nothing private; its error."""
    with pytest.raises(grpc.RpcError) as failed:
        call()
    error = failed.value
    assert error.code() == code, error.details()
    private = (str(root), "/tmp", tempfile.gettempdir(), "Traceback")
    for words in everything_said(error):
        for secret in private:
            assert secret not in words
    return errdefs.from_grpc(error)


def put(stub: content_pb2_grpc.ContentStub, ns: str, data: bytes) -> str:
    digest = digest_of(data)
    with WriteStream(stub, ns) as stream:
        stream.send(commit("put", data=data, total=len(data), expected=digest))
    return digest


def info(stub: content_pb2_grpc.ContentStub, ns: str, digest: str) -> api.Info:
    request = api.InfoRequest(digest=digest)
    return stub.Info(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT).info


def read(stub: content_pb2_grpc.ContentStub, ns: str, digest: str, offset: int = 0) -> bytes:
    request = api.ReadContentRequest(digest=digest, offset=offset)
    answers = stub.Read(request, metadata=namespaced(ns), timeout=CALL_TIMEOUT)
    return b"".join(answer.data for answer in answers)


def blob_file(daemon: DaemonProcess, digest: str) -> Path:
    return daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_not_found_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    failure(lambda: info(stub, ns, digest_of(b"absent")), Code.NOT_FOUND, daemon.root)
    failure(
        lambda: stub.Status(api.StatusRequest(ref="absent"), metadata=namespaced(ns)),
        Code.NOT_FOUND,
        daemon.root,
    )


@pytest.mark.parametrize("digest", ["sha256:zz", "no digest at all", "sha1:" + "0" * 40])
def test_invalid_digest_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str, digest: str
) -> None:
    failure(lambda: info(stub, ns, digest), Code.INVALID_ARGUMENT, daemon.root)


def test_locked_ref_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with open_store(daemon.root, ns) as beside, beside.writer("held") as held:
        held.write(b"abc")
        with WriteStream(stub, ns) as stream:
            error = failure(lambda: stream.send(stat("held")), Code.UNAVAILABLE, daemon.root)
    assert (error.reason, error.metadata) == (errdefs.REF_LOCKED, {"ref": "held"})


def test_failed_precondition_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("short", b"abc"))
        failure(
            lambda: stream.send(commit("short", offset=3, total=10)),
            Code.FAILED_PRECONDITION,
            daemon.root,
        )
    failure(
        lambda: stub.Info(api.InfoRequest(digest=digest_of(b"x")), timeout=CALL_TIMEOUT),
        Code.FAILED_PRECONDITION,
        daemon.root,
    )


def test_out_of_range_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    with WriteStream(stub, ns) as stream:
        stream.send(write("gap", b"abc"))
        failure(lambda: stream.send(write("gap", b"def", offset=5)), Code.OUT_OF_RANGE, daemon.root)
    digest = put(stub, ns, b"short blob")
    failure(lambda: read(stub, ns, digest, offset=100), Code.OUT_OF_RANGE, daemon.root)


def test_already_exists_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, f"stored once in {ns}".encode())
    with WriteStream(stub, ns) as stream:
        error = failure(
            lambda: stream.send(stat("again", expected=digest)),
            Code.ALREADY_EXISTS,
            daemon.root,
        )
    assert digest in error.message


def test_data_loss_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, f"lost behind the store's back in {ns}".encode())
    blob_file(daemon, digest).unlink()
    error = failure(lambda: read(stub, ns, digest), Code.DATA_LOSS, daemon.root)
    assert digest in error.message


def test_internal_error_keeps_internals(
    daemon: DaemonProcess, stub: content_pb2_grpc.ContentStub, ns: str
) -> None:
    digest = put(stub, ns, f"replaced by a directory in {ns}".encode())
    blob = blob_file(daemon, digest)
    blob.unlink()
    blob.mkdir()
    try:
        error = failure(lambda: read(stub, ns, digest), Code.INTERNAL, daemon.root)
    finally:
        blob.rmdir()
    assert error.reason == errdefs.INTERNAL_ERROR_REASON


def test_resource_exhausted_keeps_internals(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "root", "--max-write-streams", "1") as running,
        content_stub(running.address) as stub,
        WriteStream(stub, "default") as first,
    ):
        # A stream is admitted when its call starts: the second starts once the first is in.
        first.send(write("first", b"abc"))
        with WriteStream(stub, "default") as second:
            error = failure(
                lambda: second.send(write("second", b"abc")), Code.RESOURCE_EXHAUSTED, running.root
            )
    assert error.reason == "TOO_MANY_WRITE_STREAMS"
