"""`contentd serve`: run the daemon."""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import click

from contentd.content import (
    BUSY_TIMEOUT,
    DEFAULT_NAMESPACE,
    BackedStore,
    default_root,
    open_store,
    validate_namespace,
)
from contentd.errdefs import ContentdError, InvalidArgument
from contentd.proto.wire import default_address

from ._activation import inherited_sockets
from ._collection import CollectionPolicy
from ._config import default_config, default_config_path, effective_config, keys_table, read_config
from ._logs import LOG_FORMATS, configure_logging
from ._memory import pin_allocator_thresholds
from ._server import Daemon, ServerOptions
from ._tls import TLSFiles
from ._transfer import DEFAULT_MAX_TRANSFERS
from .registry import HttpOptions, Upstream

#: How long a blob download's redirect into object storage stays valid (docker
#: distribution's S3 middleware default).
REDIRECT_VALIDITY = 20 * 60.0
_LEVELS = ("debug", "info", "warning", "error")
_PEM_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


def _tls_files(
    cert: Path | None, key: Path | None, client_ca: Path | None, addresses: tuple[str, ...]
) -> TLSFiles | None:
    """The TLS the flags ask for, checked; a usage error says what does not fit."""
    if cert is None:
        for flag, given in (("--tls-key", key), ("--tls-ca", client_ca)):
            if given is not None:
                raise click.UsageError(f"{flag} needs --tls-cert")
        return None
    if key is None:
        raise click.UsageError("--tls-cert needs --tls-key")
    if all(address.startswith("unix:") for address in addresses):
        raise click.UsageError(
            "--tls-cert applies to TCP addresses (host:port, or --http); none given"
        )
    files = TLSFiles(cert, key, client_ca)
    try:
        files.check()
    except InvalidArgument as exc:
        raise click.UsageError(exc.message) from None
    return files


def _http_options(
    address: str | None,
    namespace: str,
    htpasswd: Path | None,
    read_only: bool,
    max_uploads: int,
    upload_ttl: float,
    redirect_blobs: bool,
    cluster: bool,
    upstream: str | None = None,
    upstream_ca: Path | None = None,
    upstream_auth_file: Path | None = None,
) -> HttpOptions | None:
    if address is None:
        for flag, given in (
            ("--http-htpasswd", htpasswd),
            ("--http-read-only", read_only),
            ("--http-redirect-blobs", redirect_blobs),
            ("--http-upstream", upstream),
        ):
            if given:
                raise click.UsageError(f"{flag} needs --http")
    if upstream is None:
        for flag, given in (
            ("--http-upstream-ca", upstream_ca),
            ("--http-upstream-auth-file", upstream_auth_file),
        ):
            if given:
                raise click.UsageError(f"{flag} needs --http-upstream")
    if address is None:
        return None
    mirrored = None
    if upstream is not None:
        try:
            mirrored = Upstream(upstream, ca=upstream_ca, auth_file=upstream_auth_file)
        except InvalidArgument as exc:
            raise click.UsageError(f"--http-upstream: {exc.message}") from None
    if redirect_blobs and not cluster:
        raise click.UsageError("--http-redirect-blobs needs --blobs: blobs in object storage")
    try:
        validate_namespace(namespace)
    except InvalidArgument as exc:
        raise click.UsageError(f"--http-namespace: {exc}") from None
    return HttpOptions(
        address,
        namespace=namespace,
        htpasswd=htpasswd,
        read_only=read_only,
        max_open_uploads=max_uploads,
        upload_ttl=upload_ttl,
        redirect_blobs=REDIRECT_VALIDITY if redirect_blobs else None,
        upstream=mirrored,
    )


class _ConfigOption(click.Option):
    """``--config FILE``: read before every other option, whose defaults the file sets.

    Without it, the default file is read when it exists: /etc/contentd/config.toml for
    root, else config.toml in the store root (named by --root, here or before the verb).
    """

    def handle_parse_result(
        self, ctx: click.Context, opts: Mapping[str, Any], args: list[str]
    ) -> tuple[Any, list[str]]:
        value, args = super().handle_parse_result(ctx, opts, args)
        # Not given, click 8.2+ has a sentinel of its own here, older ones None.
        path = value if isinstance(value, Path) else None
        if path is None:
            parent = ctx.parent.params if ctx.parent is not None else {}
            root = opts.get("root") or parent.get("root") or default_root()
            found = default_config_path(Path(root))
            path = found if found.is_file() else None
        if path is not None:
            ctx.default_map = {**(ctx.default_map or {}), **read_config(path, ctx.command)}
        ctx.meta[_CONFIG_FILE] = path
        return value, args


#: Where `serve`'s context keeps the config file it read (None: none).
_CONFIG_FILE = "contentd.config_file"


@click.command()
@click.option(
    "--config",
    cls=_ConfigOption,
    is_eager=True,
    expose_value=False,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML config file whose keys set any of these options; flags win over it "
    "(`contentd config default` prints one) [default: /etc/contentd/config.toml as root, "
    "else ROOT/config.toml, when it exists].",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory, or with --blobs and --metadata where the default socket goes "
    "[default: $XDG_DATA_HOME/contentd, else ~/.local/share/contentd].",
)
@click.option(
    "--blobs",
    envvar="CONTENTD_BLOBS",
    metavar="URL",
    help="Keep blob bytes in object storage: s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME] "
    "(with --metadata; any number of daemons may serve one such store).",
)
@click.option(
    "--metadata",
    envvar="CONTENTD_METADATA",
    metavar="URL",
    help="Keep records and writer locks in PostgreSQL: postgresql://[USER@]HOST[:PORT]/DB"
    "[?schema=NAME] (with --blobs).",
)
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="ADDR",
    help="unix:///path or host:port; repeatable [default: unix://ROOT/contentd.sock].",
)
@click.option("--socket-group", default=None, help="Group (name or id) owning unix sockets.")
@click.option("--tls-cert", type=_PEM_FILE, help="PEM certificate chain: TCP addresses serve TLS.")
@click.option("--tls-key", type=_PEM_FILE, help="PEM private key of --tls-cert.")
@click.option(
    "--tls-ca", type=_PEM_FILE, help="PEM CA certificates: TCP clients must present one it signed."
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds running calls get to finish on SIGTERM/SIGINT.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Calls served at once (each Write stream holds one until it ends).",
)
@click.option(
    "--max-write-streams",
    type=click.IntRange(min=1),
    default=None,
    help="Write streams at once; more are refused [default: 3/4 of --workers].",
)
@click.option(
    "--max-ingests-per-namespace",
    type=click.IntRange(min=1),
    default=None,
    help="Write streams at once in one namespace; more are refused "
    "[default: only --max-write-streams bounds them].",
)
@click.option(
    "--write-idle-timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds a Write stream may wait for its client before it is canceled (0: never).",
)
@click.option(
    "--max-transfers",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_TRANSFERS,
    show_default=True,
    help="Pulls the daemon fetches itself at once (contentd pull through it); more are "
    "refused. 0: none, clients fetch and write through the Content API.",
)
@click.option(
    "--store-busy-timeout",
    type=click.FloatRange(min=0),
    default=BUSY_TIMEOUT,
    show_default=True,
    help="Seconds a change waits for another process's metadata transaction (then UNAVAILABLE).",
)
@click.option(
    "--http",
    "http_address",
    metavar="HOST:PORT",
    default=None,
    help="Also serve the OCI distribution API (a registry) here; port 0 picks one [default: off].",
)
@click.option(
    "--http-namespace",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Store namespace whose blobs the registry serves.",
)
@click.option(
    "--http-htpasswd",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    default=None,
    help="htpasswd file of bcrypt hashes (htpasswd -B): the registry asks for basic auth.",
)
@click.option(
    "--http-read-only",
    is_flag=True,
    default=False,
    help="The registry answers GET and HEAD only; pushes and deletes are UNSUPPORTED.",
)
@click.option(
    "--http-max-uploads",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Upload writers the registry keeps open at once; past it idle ones close "
    "and, when all are busy, new uploads get TOOMANYREQUESTS.",
)
@click.option(
    "--http-redirect-blobs",
    is_flag=True,
    help="Answer blob GETs with a redirect to object storage (a presigned URL valid 20 "
    "minutes), as docker-registry does on S3; needs --blobs.",
)
@click.option(
    "--http-upload-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=24 * 3600.0,
    show_default=True,
    help="Seconds an upload may sit untouched before the registry aborts it and frees its bytes.",
)
@click.option(
    "--http-upstream",
    metavar="URL",
    default=None,
    help="Make the registry a pull-through mirror of this one (https://HOST[:PORT], or "
    "http:// for a local one): what is pulled and missing is fetched from it and kept; "
    "pushes and deletes are UNSUPPORTED.",
)
@click.option(
    "--http-upstream-ca",
    type=_PEM_FILE,
    default=None,
    help="PEM CA certificates the upstream's certificate may chain to [default: the system's].",
)
@click.option(
    "--http-upstream-auth-file",
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
    default=None,
    help="Credentials for the upstream, in docker's config.json format [default: those "
    "`contentd pull` finds: $REGISTRY_AUTH_FILE, then containers' auth.json, then "
    "~/.docker/config.json].",
)
@click.option(
    "--metrics",
    "metrics_address",
    metavar="HOST:PORT",
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics; port 0 picks one [default: off].",
)
@click.option(
    "--gc-scheduler/--no-gc-scheduler",
    default=True,
    show_default=True,
    help="Collect garbage by containerd's policy (off: only sync deletes and `contentd gc` do).",
)
@click.option(
    "--gc-pause-threshold",
    type=click.FloatRange(0, 0.5),
    default=CollectionPolicy.pause_threshold,
    show_default=True,
    help="Share of time collections may take; ticks are spaced to keep to it.",
)
@click.option(
    "--gc-deletion-threshold",
    type=click.IntRange(min=0),
    default=CollectionPolicy.deletion_threshold,
    show_default=True,
    help="Deletions that collect at once (0: any deletion collects at the next tick).",
)
@click.option(
    "--gc-mutation-threshold",
    type=click.IntRange(min=0),
    default=CollectionPolicy.mutation_threshold,
    show_default=True,
    help="Commits that make the next tick collect (0: never).",
)
@click.option(
    "--gc-schedule-delay",
    type=click.FloatRange(min=0),
    default=CollectionPolicy.schedule_delay,
    show_default=True,
    help="Seconds from a trigger (a sync delete) to its collection.",
)
@click.option(
    "--gc-startup-delay",
    type=click.FloatRange(min=0),
    default=CollectionPolicy.startup_delay,
    show_default=True,
    help="Seconds from start to the first collection.",
)
@click.option(
    "--log-level",
    type=click.Choice(_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="debug logs one line per request.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    default="text",
    show_default=True,
    help="text: a line for people; json: an object a line (time, level, logger, message, "
    "and a request's request_id, method, namespace, code, duration_ms).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    *,
    root: Path | None,
    blobs: str | None,
    metadata: str | None,
    addresses: tuple[str, ...],
    socket_group: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    grace: float,
    workers: int,
    max_write_streams: int | None,
    max_ingests_per_namespace: int | None,
    write_idle_timeout: float,
    max_transfers: int,
    store_busy_timeout: float,
    http_address: str | None,
    http_namespace: str,
    http_htpasswd: Path | None,
    http_read_only: bool,
    http_max_uploads: int,
    http_upload_ttl: float,
    http_redirect_blobs: bool,
    http_upstream: str | None,
    http_upstream_ca: Path | None,
    http_upstream_auth_file: Path | None,
    metrics_address: str | None,
    gc_scheduler: bool,
    gc_pause_threshold: float,
    gc_deletion_threshold: int,
    gc_mutation_threshold: int,
    gc_schedule_delay: float,
    gc_startup_delay: float,
    log_level: str,
    log_format: str,
) -> None:
    """Serve the store over gRPC (containerd.services.content.v1.Content)."""
    configure_logging(log_level, log_format)
    pin_allocator_thresholds()
    # `kill -USR1 PID` prints every thread's stack on stderr: what a stuck daemon is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # `contentd --root DIR serve` names the store with the global option.
    parent = ctx.parent.params if ctx.parent is not None else {}
    root = root or parent.get("root") or default_root()
    blobs = blobs or parent.get("blobs")
    metadata = metadata or parent.get("metadata")
    if (blobs is None) != (metadata is None):
        raise click.UsageError("give --blobs and --metadata together")
    try:
        activated = inherited_sockets()
    except InvalidArgument as exc:
        raise click.ClickException(exc.message) from None
    # Sockets systemd passed stand in for the default address.
    addresses = addresses or (() if activated else (default_address(root),))
    _log_config(ctx, root=root, blobs=blobs, metadata=metadata, addresses=addresses)
    options = ServerOptions(
        addresses=addresses,
        # TLS covers the registry too: it is one more TCP listener.
        tls=_tls_files(
            tls_cert, tls_key, tls_ca, addresses + ((http_address,) if http_address else ())
        ),
        socket_group=socket_group,
        workers=workers,
        max_write_streams=max_write_streams,
        max_ingests_per_namespace=max_ingests_per_namespace,
        write_idle_timeout=write_idle_timeout or None,
        max_transfers=max_transfers,
        grace=grace,
        http=_http_options(
            http_address,
            http_namespace,
            http_htpasswd,
            http_read_only,
            http_max_uploads,
            http_upload_ttl,
            http_redirect_blobs,
            cluster=blobs is not None,
            upstream=http_upstream,
            upstream_ca=http_upstream_ca,
            upstream_auth_file=http_upstream_auth_file,
        ),
        metrics=metrics_address,
        collection=CollectionPolicy(
            pause_threshold=gc_pause_threshold,
            deletion_threshold=gc_deletion_threshold,
            mutation_threshold=gc_mutation_threshold,
            schedule_delay=gc_schedule_delay,
            startup_delay=gc_startup_delay,
            automatic=gc_scheduler,
        ),
        activated=activated,
    )
    try:
        store: BackedStore = (
            open_store(blobs=blobs, metadata=metadata, busy_timeout=store_busy_timeout)
            if blobs is not None and metadata is not None
            else open_store(root, busy_timeout=store_busy_timeout)
        )
        daemon = Daemon(store, options)
    except ContentdError as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logging.getLogger("contentd.daemon").info("%s: shutting down", signal.strsignal(signum))
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    daemon.start()
    # A process signal may land on any thread (grpc's included); its Python handler
    # runs only when the main thread next runs bytecode, so never wait without a bound.
    while not stop.wait(0.5):
        pass
    daemon.stop()
    store.close()


def _log_config(ctx: click.Context, **resolved: Any) -> None:
    """Log the settings the daemon runs with, by config key, secrets masked."""
    shown = effective_config(ctx.command, {**ctx.params, **resolved})
    source = ctx.meta.get(_CONFIG_FILE)
    logging.getLogger("contentd.daemon").info(
        "config%s: %s",
        f" from {source}" if source else " (no config file)",
        " ".join(f"{key}={json.dumps(value)}" for key, value in shown.items()),
        extra={"config": shown, "config_file": str(source) if source else None},
    )


@click.group()
def config() -> None:
    """The config file of `contentd serve`: a TOML file of its options' keys."""


@config.command(name="default")
def config_default() -> None:
    """Print a config file of every key, set to its default, with what it does."""
    click.echo(default_config(serve), nl=False)


@config.command(name="keys")
def config_keys_table() -> None:
    """Print the config keys as a Markdown table (the README's)."""
    click.echo(keys_table(serve), nl=False)
