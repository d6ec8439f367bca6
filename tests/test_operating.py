"""Operating contentd: the config file, the logs, systemd socket activation and units.

Daemons are real subprocesses; what they run with is read from the config line they log
at start, and what they serve is asked of them over the wire.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from support.activation import listening_unix_socket, start_activated
from support.ctr import Ctr
from support.daemon import DaemonProcess, contentd_command, running_daemon

from contentd import errdefs
from contentd.client import RemoteStore
from contentd.content import redact_url, write_blob
from contentd.daemon._config import (
    TABLES,
    config_keys,
    default_config_path,
    effective_config,
    read_config,
)
from contentd.daemon.cli import serve

REPOSITORY = Path(__file__).resolve().parent.parent
UNITS = REPOSITORY / "dist" / "systemd"


def contentd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*contentd_command(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def json_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """Every line the daemon logged, each parsed as JSON (failing on any that is not)."""
    return [json.loads(line) for line in daemon.logged().splitlines()]


def logged_config(daemon: DaemonProcess) -> dict[str, Any]:
    """The effective config a JSON-logging daemon logged at start."""
    return next(line["config"] for line in json_lines(daemon) if "config" in line)


def poll(check: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def store_blob(store: RemoteStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    write_blob(store, f"ref-{digest}", io.BytesIO(data), len(data), digest)
    return digest


# The config file


def test_every_serve_option_has_one_config_key() -> None:
    options = [p for p in serve.params if isinstance(p, click.Option) and p.name != "config"]
    names = [key.name for key in config_keys(serve)]
    assert len(names) == len(options) == len(set(names))
    assert {"workers", "addresses", "http.address", "gc.pause_threshold", "log.format"} <= set(
        names
    )


def test_default_config_parses_and_sets_every_default(tmp_path: Path) -> None:
    printed = contentd("config", "default")
    assert printed.returncode == 0, printed.stderr
    document = tomllib.loads(printed.stdout)
    assert set(document) >= set(TABLES)
    path = tmp_path / "config.toml"
    path.write_text(printed.stdout)
    defaults = read_config(path, serve)
    for key in config_keys(serve):
        if key.default is not None:
            assert defaults[key.option.name] == key.default, key.name
        else:
            assert key.option.name not in defaults, key.name
            assert f"# {key.key} = " in printed.stdout


def test_flags_win_over_the_file_and_the_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        'workers = 3\ngrace = 2\n[gc]\nmutation_threshold = 7\n[http]\nnamespace = "mirror"\n'
        '[log]\nformat = "json"\n'
    )
    with running_daemon(tmp_path / "root", "--config", str(config), "--workers", "5") as daemon:
        shown = logged_config(daemon)
    assert shown["workers"] == 5
    assert shown["grace"] == 2.0
    assert shown["gc.mutation_threshold"] == 7
    assert shown["http.namespace"] == "mirror"
    assert shown["store_busy_timeout"] == 10.0


def test_repeatable_and_switch_options_take_arrays_and_booleans(tmp_path: Path) -> None:
    socket_dir = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    extra = f"unix://{socket_dir / 'second.sock'}"
    config = tmp_path / "config.toml"
    config.write_text(f'addresses = ["{extra}"]\n[gc]\nscheduler = false\n[log]\nformat = "json"\n')
    try:
        # The fixture's own --address joins; a flag given replaces the file's list.
        with running_daemon(tmp_path / "root", "--config", str(config)) as daemon:
            shown = logged_config(daemon)
        assert shown["addresses"] == [daemon.address]
        assert shown["gc.scheduler"] is False
        # Without the flag, the file's list is served.
        served = subprocess.Popen(
            [
                *contentd_command(),
                "serve",
                "--root",
                str(tmp_path / "root"),
                "--config",
                str(config),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert poll((socket_dir / "second.sock").exists, timeout=20)
            store = RemoteStore(extra, "default", timeout=10)
            store.wait_ready(timeout=15)
            store.close()
        finally:
            served.terminate()
            served.communicate(timeout=30)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("workerz = 3\n", "unknown key workerz (did you mean workers?)"),
        ("[gc]\npause_threshold = 0.9\n", "gc.pause_threshold: 0.9 is not in the range"),
        ("workers = 1.5\n", "workers: expected an integer, not 1.5"),
        ("workers = 0\n", "workers: 0 is not in the range x>=1"),
        ('addresses = "unix:///x"\n', "addresses: expected an array of strings"),
        ("[gc]\nscheduler = 1\n", "gc.scheduler: expected a boolean, not 1"),
        ('[log]\nlevel = "loud"\n', "log.level: 'loud' is not one of"),
        ('http = "127.0.0.1:5000"\n', "unknown key http (http is a table"),
        ("[tls]\ncert = 3\n", "tls.cert: expected a string, not 3"),
        ("workers = [\n", "not valid TOML"),
    ],
)
def test_a_bad_config_is_refused_naming_the_file_and_key(
    tmp_path: Path, text: str, words: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    refused = contentd("serve", "--root", str(tmp_path / "root"), "--config", str(config))
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"contentd: config {config}: "), refused.stderr
    assert words in refused.stderr
    assert not (tmp_path / "root").exists()


def test_a_missing_config_file_given_is_refused(tmp_path: Path) -> None:
    refused = contentd("serve", "--config", str(tmp_path / "absent.toml"))
    assert refused.returncode == 2
    assert "'--config'" in refused.stderr
    assert "does not exist" in refused.stderr


@pytest.mark.parametrize(
    ("uid", "expected"), [(0, "/etc/contentd/config.toml"), (1000, "/srv/store/config.toml")]
)
def test_default_config_is_etcs_for_root_and_the_store_roots_for_others(
    monkeypatch: pytest.MonkeyPatch, uid: int, expected: str
) -> None:
    # Running a daemon as another user needs the test environment readable by it; the
    # choice itself is this function's.
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    assert default_config_path(Path("/srv/store")) == Path(expected)


def test_default_config_file_is_read_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "config.toml").write_text("workers = 9\n[gc]\nscheduler = false\n")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    context = serve.make_context("serve", ["--root", str(root)])
    assert context.params["workers"] == 9
    assert context.params["gc_scheduler"] is False
    # A flag still wins over it.
    context = serve.make_context("serve", ["--root", str(root), "--workers", "2"])
    assert context.params["workers"] == 2


def test_effective_config_masks_secrets_in_urls() -> None:
    params = {
        "blobs": "s3://bucket/p?endpoint=https://key:hidden1@s3.local:8333&region=eu",
        "metadata": "postgresql://app:hidden2@db.local/store?schema=cd&sslpassword=hidden3",
        "tls_key": Path("/etc/contentd/key.pem"),
    }
    shown = effective_config(serve, params)
    assert "hidden" not in json.dumps(shown)
    assert shown["blobs"] == "s3://bucket/p?endpoint=https://key:***@s3.local:8333&region=eu"
    assert shown["metadata"] == "postgresql://app:***@db.local/store?schema=cd&sslpassword=***"
    assert shown["tls.key"] == "/etc/contentd/key.pem"


@pytest.mark.parametrize(
    "url",
    ["unix:///run/contentd/contentd.sock", "s3://bucket/prefix?region=eu", "postgresql://db/x"],
)
def test_urls_without_secrets_are_shown_as_given(url: str) -> None:
    assert redact_url(url) == url


def test_daemon_logs_its_config_with_secrets_masked(tmp_path: Path) -> None:
    # The store cannot open (nothing listens there), but the config is logged first.
    refused = contentd(
        "serve",
        "--root",
        str(tmp_path / "root"),
        "--blobs",
        "s3://bucket?endpoint=http://key:hidden1@127.0.0.1:9",
        "--metadata",
        "postgresql://app:hidden2@127.0.0.1:9/store?connect_timeout=1",
        "--log-format",
        "json",
    )
    assert refused.returncode != 0
    assert "hidden" not in refused.stderr
    first = json.loads(refused.stderr.splitlines()[0])
    assert first["config"]["metadata"] == "postgresql://app:***@127.0.0.1:9/store?connect_timeout=1"


# The README's keys table


def test_readme_config_keys_table_matches_the_code() -> None:
    readme = (REPOSITORY / "README.md").read_text()
    found = re.search(
        r"<!-- config-keys: begin.*?-->\n(.*?)<!-- config-keys: end -->", readme, re.DOTALL
    )
    assert found is not None, "README.md lacks the config keys table's markers"
    printed = contentd("config", "keys")
    assert printed.returncode == 0, printed.stderr
    assert found[1] == printed.stdout, "regenerate it: contentd config keys"


# Logs


@pytest.fixture
def json_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(
        tmp_path / "root", "--log-format", "json", "--log-level", "debug", "--http", "127.0.0.1:0"
    ) as daemon:
        yield daemon


def test_json_logs_are_one_object_a_line(json_daemon: DaemonProcess) -> None:
    lines = json_lines(json_daemon)
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["time"].endswith("Z")
    assert any(line["message"].startswith("serving on unix://") for line in lines)


def test_grpc_request_lines_carry_id_method_namespace_code_duration(
    json_daemon: DaemonProcess,
) -> None:
    store = RemoteStore(json_daemon.address, "team-a", timeout=10)
    store.wait_ready(timeout=10)
    with pytest.raises(errdefs.NotFound):
        store.info("sha256:" + "0" * 64)
    store.close()
    method = "/containerd.services.content.v1.Content/Info"

    def request_line() -> dict[str, Any] | None:
        return next(
            (line for line in json_lines(json_daemon) if line.get("method") == method), None
        )

    assert poll(lambda: request_line() is not None)
    line = request_line()
    assert line is not None
    assert line["namespace"] == "team-a"
    assert line["code"] == "NOT_FOUND"
    assert re.fullmatch(r"[0-9a-f]{16}", line["request_id"])
    assert isinstance(line["duration_ms"], float)


def test_http_request_lines_name_the_route(json_daemon: DaemonProcess) -> None:
    url = f"{json_daemon.http_url}/v2/library/app/manifests/latest"
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(url, timeout=10)
    assert answered.value.code == 404
    route = "GET /v2/<name>/manifests/<reference>"

    def request_line() -> dict[str, Any] | None:
        return next((line for line in json_lines(json_daemon) if line.get("method") == route), None)

    assert poll(lambda: request_line() is not None)
    line = request_line()
    assert line is not None
    assert (line["code"], line["namespace"]) == (404, "default")
    assert re.fullmatch(r"[0-9a-f]{16}", line["request_id"])


def test_internal_error_id_is_in_the_json_log_and_the_callers_message(
    json_daemon: DaemonProcess,
) -> None:
    store = RemoteStore(json_daemon.address, "default", timeout=10)
    store.wait_ready(timeout=10)
    digest = store_blob(store, b"the blob that becomes a directory")
    blob = json_daemon.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    # A directory where the blob should be: opening works, reading fails (EISDIR).
    blob.unlink()
    blob.mkdir()
    with pytest.raises(errdefs.Internal) as failed:
        store.reader_at(digest).read_at(10, 0)
    store.close()
    error_id = failed.value.metadata["error_id"]
    assert error_id in failed.value.message

    def error_line() -> dict[str, Any] | None:
        return next(
            (line for line in json_lines(json_daemon) if line.get("error_id") == error_id), None
        )

    assert poll(lambda: error_line() is not None)
    line = error_line()
    assert line is not None
    assert line["level"] == "error"
    assert error_id in line["message"]
    assert "IsADirectoryError" in line["exception"]


# systemd socket activation


@pytest.fixture
def systemd_socket() -> Iterator[socket.socket]:
    """A listening unix socket held by the test, as systemd holds a socket unit's."""
    directory = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    listener = listening_unix_socket(directory / "contentd.sock")
    yield listener
    listener.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_daemon_serves_the_socket_systemd_passed(
    tmp_path: Path, systemd_socket: socket.socket
) -> None:
    daemon = start_activated(tmp_path / "root", systemd_socket)
    try:
        assert "(socket passed by systemd)" in daemon.logged()
        store = RemoteStore(daemon.address, "default", timeout=30)
        store.wait_ready(timeout=10)
        data = os.urandom(5 << 20)
        digest = store_blob(store, data)
        assert store.reader_at(digest).read_at(len(data), 0) == data
        store.close()
        ctr = Ctr(daemon.address, "default")
        assert (
            digest
            in subprocess.run(
                ctr.command("content", "ls", "-q"), capture_output=True, timeout=60, check=True
            ).stdout.decode()
        )
    finally:
        assert daemon.stop() == 0


def test_connection_waiting_in_the_socket_before_start_is_served(
    tmp_path: Path, systemd_socket: socket.socket
) -> None:
    # The client that makes systemd start the daemon connects before the daemon runs.
    early = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    early.connect(systemd_socket.getsockname())
    # An HTTP/2 client's preface and an empty SETTINGS frame.
    early.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
    daemon = start_activated(tmp_path / "root", systemd_socket)
    try:
        early.settimeout(30)
        frame = early.recv(9)
        # The server's first frame is its SETTINGS (type 4), on stream 0.
        assert len(frame) == 9
        assert frame[3] == 4
    finally:
        early.close()
        assert daemon.stop() == 0


def test_socket_stays_systemds_across_daemon_restarts(
    tmp_path: Path, systemd_socket: socket.socket
) -> None:
    path = Path(systemd_socket.getsockname())
    first = start_activated(tmp_path / "root", systemd_socket)
    store = RemoteStore(first.address, "default", timeout=30)
    store.wait_ready(timeout=10)
    digest = store_blob(store, b"kept across restarts")
    store.close()
    assert first.stop() == 0
    # The daemon neither unlinked the path nor closed systemd's socket.
    assert path.is_socket()
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(path))
    probe.close()
    second = start_activated(tmp_path / "root", systemd_socket)
    try:
        store = RemoteStore(second.address, "default", timeout=30)
        store.wait_ready(timeout=10)
        assert store.info(digest).size == len(b"kept across restarts")
        store.close()
    finally:
        assert second.stop() == 0


def test_an_address_naming_the_passed_socket_is_not_bound_again(
    tmp_path: Path, systemd_socket: socket.socket
) -> None:
    address = f"unix://{systemd_socket.getsockname()}"
    daemon = start_activated(tmp_path / "root", systemd_socket, "--address", address)
    try:
        assert daemon.logged().count("serving on ") == 1
        store = RemoteStore(address, "default", timeout=30)
        store.wait_ready(timeout=10)
        store.close()
    finally:
        assert daemon.stop() == 0
    assert Path(systemd_socket.getsockname()).is_socket()


def test_a_tcp_socket_passed_is_refused(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(RuntimeError) as failed:
            start_activated(tmp_path / "root", listener, timeout=20)
    finally:
        listener.close()
    assert "descriptor 3 is no listening unix stream socket" in str(failed.value)


def test_sockets_passed_to_another_process_are_not_taken(tmp_path: Path) -> None:
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    socket_dir = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    address = f"unix://{socket_dir / 'contentd.sock'}"
    process = subprocess.Popen(
        [*contentd_command(), "serve", "--root", str(tmp_path / "root"), "--address", address],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert poll((socket_dir / "contentd.sock").exists, timeout=20)
        store = RemoteStore(address, "default", timeout=10)
        store.wait_ready(timeout=15)
        store.close()
    finally:
        process.terminate()
        _, logged = process.communicate(timeout=30)
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert "socket passed by systemd" not in logged


# The unit files


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(UNITS / name)
    return parser


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    for name in ("contentd.service", "contentd.socket"):
        text = (UNITS / name).read_text()
        # verify checks that ExecStart's program exists: point it at this environment's.
        executable = shutil.which("contentd", path=os.path.dirname(sys.executable))
        assert executable is not None
        (tmp_path / name).write_text(text.replace("/usr/local/bin/contentd", executable))
    checked = subprocess.run(
        [analyze, "verify", "--man=no", "contentd.socket", "contentd.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == ""


def test_service_runs_serve_with_flags_that_exist_on_the_sockets_path() -> None:
    service, sock = _unit("contentd.service"), _unit("contentd.socket")
    command = shlex.split(service["Service"]["ExecStart"])
    assert command[:2] == ["/usr/local/bin/contentd", "serve"]
    context = serve.make_context("serve", command[2:])
    assert context.params["addresses"] == (f"unix://{sock['Socket']['ListenStream']}",)
    assert "contentd.socket" in service["Unit"]["Requires"]
