"""The `contentd` command line: ctr-style content verbs on a daemon or directly on a store.

A command runs in a process of its own, so what it loads is part of its
time: gRPC and protobuf (a daemon), aiohttp (registries), rich (a terminal)
and the entry points (other packages' verbs) are imported where they are
first needed, and a daemonless pull, say, loads neither gRPC nor rich.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import click

from contentd.content import (
    DEFAULT_NAMESPACE,
    EXPIRE_LABEL,
    BlobCheck,
    CollectionReport,
    Image,
    Info,
    Lease,
    LocalStore,
    MetadataStore,
    ReaderAt,
    Status,
    open_store,
    verify_namespace,
    write_blob,
)
from contentd.errdefs import (
    Aborted,
    AlreadyExists,
    Canceled,
    Conflict,
    ContentdError,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    NotModified,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
    classify,
    public_error,
)

from ._transfer import DEFAULT_CONCURRENCY, TransferEvent

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ._tls import TLSConfig

#: Entry-point group through which other packages add verbs (the daemon adds `serve`).
COMMAND_GROUP: Final = "contentd.commands"

#: The exit status for each error class; usage errors exit 2, as click's do.
EXIT_CODES: Final[dict[type[ContentdError], int]] = {
    Unknown: 1,
    Internal: 1,
    InvalidArgument: 2,
    NotFound: 3,
    AlreadyExists: 4,
    FailedPrecondition: 5,
    Conflict: 6,
    NotModified: 7,
    Aborted: 8,
    OutOfRange: 9,
    Unimplemented: 10,
    Unavailable: 11,
    DataLoss: 12,
    PermissionDenied: 13,
    Unauthenticated: 14,
    ResourceExhausted: 15,
    DeadlineExceeded: 124,
    Canceled: 130,
}

_COPY_CHUNK: Final = 1 << 20


class _Verbs(click.Group):
    """The CLI's verbs, plus those registered under the `contentd.commands` entry points."""

    def _registered(self) -> dict[str, click.Command]:
        from importlib.metadata import entry_points  # noqa: PLC0415 (see the module)

        return {ep.name: ep.load() for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._registered()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._registered().get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ContentdError as exc:
            _fail(exc)


def _fail(exc: BaseException) -> NoReturn:
    """Report an error as one line on stderr and exit with its class's status."""
    shown = public_error(exc, passthrough_remote=True)
    click.echo(f"contentd: {shown}", err=True)
    sys.exit(EXIT_CODES.get(classify(shown) or Unknown, 1))


class _Settings:
    """The global options, and the store they name (opened on first use)."""

    def __init__(
        self,
        address: str | None,
        root: Path | None,
        namespace: str,
        as_json: bool,
        timeout: float,
        tls: TLSConfig | None = None,
        cluster: tuple[str, str] | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self.root = root
        self.cluster = cluster
        self.namespace = namespace
        self.json = as_json
        self.timeout = timeout
        self._store: MetadataStore | None = None

    def store(self) -> MetadataStore:
        if self._store is None:
            if self.root is not None:
                self._store = open_store(self.root, self.namespace)
            elif self.cluster is not None:
                blobs, metadata = self.cluster
                self._store = open_store(blobs=blobs, metadata=metadata, namespace=self.namespace)
            else:
                from contentd.proto.wire import default_address  # noqa: PLC0415

                from ._remote import RemoteStore  # noqa: PLC0415

                remote = RemoteStore(
                    self.address or default_address(),
                    self.namespace,
                    timeout=self.timeout,
                    tls=self.tls,
                )
                remote.wait_ready(timeout=min(self.timeout, 10.0))
                self._store = remote
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@click.group(cls=_Verbs)
@click.option(
    "--address",
    envvar="CONTENTD_ADDRESS",
    metavar="ADDR",
    help="Daemon to talk to: unix:///path or host:port [default: the default daemon's socket].",
)
@click.option(
    "--root",
    envvar="CONTENTD_ROOT",
    type=click.Path(file_okay=False, path_type=Path),
    help="Work on this store directory directly, without a daemon.",
)
@click.option(
    "--blobs",
    envvar="CONTENTD_BLOBS",
    metavar="URL",
    help="With --metadata, work on a cluster store directly: its s3:// object storage.",
)
@click.option(
    "--metadata",
    envvar="CONTENTD_METADATA",
    metavar="URL",
    help="With --blobs, work on a cluster store directly: its postgresql:// database.",
)
@click.option(
    "-n",
    "--namespace",
    envvar="CONTENTD_NAMESPACE",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Namespace to work in.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds each call to a daemon may take.",
)
@click.option(
    "--tls-ca",
    envvar="CONTENTD_TLS_CA",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Speak TLS to the daemon, trusting the CA certificates in this PEM file.",
)
@click.option(
    "--tls-cert",
    envvar="CONTENTD_TLS_CERT",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Speak TLS, presenting this PEM client certificate (daemons requiring mutual TLS).",
)
@click.option(
    "--tls-key",
    envvar="CONTENTD_TLS_KEY",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.pass_context
def main(
    ctx: click.Context,
    *,
    address: str | None,
    root: Path | None,
    blobs: str | None,
    metadata: str | None,
    namespace: str,
    as_json: bool,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """contentd: a content-addressable blob store speaking containerd's Content API.

    Verbs work on a daemon (--address) or directly on a store directory
    (--root), the same way; errors print one line and exit with a status
    that names their class (see the README).
    """
    if (blobs is None) != (metadata is None):
        raise click.UsageError("give --blobs and --metadata together")
    cluster = (blobs, metadata) if blobs is not None and metadata is not None else None
    if sum(1 for given in (address, root, cluster) if given) > 1:
        raise click.UsageError("give one of --address, --root or --blobs with --metadata")
    tls = None
    if tls_ca or tls_cert or tls_key:
        if root or cluster:
            raise click.UsageError("--tls-* options are for a daemon (--address), not --root")
        if (tls_cert is None) != (tls_key is None):
            raise click.UsageError("give --tls-cert and --tls-key together")
        from ._tls import TLSConfig  # noqa: PLC0415

        tls = TLSConfig(ca=tls_ca, cert=tls_cert, key=tls_key)
    settings = _Settings(address, root, namespace, as_json, timeout, tls, cluster)
    ctx.obj = settings
    ctx.call_on_close(settings.close)


pass_settings = click.make_pass_decorator(_Settings)


# Formatting


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _info_json(info: Info) -> dict[str, Any]:
    return {
        "digest": info.digest,
        "size": info.size,
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "labels": dict(info.labels),
    }


def _status_json(status: Status) -> dict[str, Any]:
    return {
        "ref": status.ref,
        "offset": status.offset,
        "total": status.total,
        "expected": status.expected,
        "started_at": _iso(status.started_at),
        "updated_at": _iso(status.updated_at),
    }


def human_size(size: int) -> str:
    """A size for people: 512 B, 4.0 KiB, 1.5 MiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_age(moment: datetime, now: datetime | None = None) -> str:
    """How long ago, for people: 5 seconds, 3 minutes, 2 days."""
    seconds = max(0, int(((now or datetime.now(UTC)) - moment).total_seconds()))
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = seconds // length
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels)) or "-"


def _table(headers: list[str], rows: Iterable[list[str]]) -> None:
    rows = list(rows)
    if sys.stdout.isatty():
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table  # noqa: PLC0415

        table = Table(*headers, box=None, pad_edge=False, header_style="bold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    for row in [headers, *rows]:
        click.echo("\t".join(row))


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; otherwise nothing at all."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


# Verbs


@main.command(name="ls")
@click.argument("filters", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="Print digests only.")
@pass_settings
def list_content(settings: _Settings, filters: tuple[str, ...], quiet: bool) -> None:
    """List blobs, optionally matching any of FILTERS (e.g. labels.k==v)."""
    infos = settings.store().walk(*filters)
    if settings.json:
        click.echo(json.dumps([_info_json(info) for info in infos]))
    elif quiet:
        for info in infos:
            click.echo(info.digest)
    else:
        _table(
            ["DIGEST", "SIZE", "AGE", "LABELS"],
            (
                [
                    i.digest,
                    human_size(i.size),
                    human_age(i.created_at),
                    _labels_text(i.labels.items()),
                ]
                for i in infos
            ),
        )


@main.command()
@click.argument("digest")
@pass_settings
def info(settings: _Settings, digest: str) -> None:
    """Show everything about one blob."""
    described = _info_json(settings.store().info(digest))
    if settings.json:
        click.echo(json.dumps(described))
        return
    for key in ("digest", "size", "created_at", "updated_at"):
        click.echo(f"{key}: {described[key]}")
    click.echo("labels:" + ("" if described["labels"] else " -"))
    for key, value in sorted(described["labels"].items()):
        click.echo(f"  {key}={value}")


@main.command()
@click.argument("digest")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE instead of stdout.",
)
@pass_settings
def get(settings: _Settings, digest: str, output: Path | None) -> None:
    """Write a blob's bytes out, checking them against its digest."""
    store = settings.store()
    with store.reader_at(digest) as reader:
        target: IO[bytes]
        target = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
        try:
            _copy_verified(reader, target, digest, reader.size)
        except BaseException:
            if output:
                target.close()
                output.unlink(missing_ok=True)
            raise
        if output:
            target.close()
        else:
            target.flush()


def _copy_verified(reader: ReaderAt, target: IO[bytes], digest: str, size: int) -> None:
    algorithm = digest.partition(":")[0]
    hasher = hashlib.new(algorithm)
    done = 0
    with _progress(digest[:19], size) as progress:
        while chunk := reader.read(_COPY_CHUNK):
            hasher.update(chunk)
            target.write(chunk)
            done += len(chunk)
            progress(done)
    if f"{algorithm}:{hasher.hexdigest()}" != digest or done != size:
        raise DataLoss(f"content {digest}: the bytes read do not match the digest")


def _parse_labels(pairs: Iterable[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"label {pair!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


@main.command()
@click.argument("ref")
@click.option("--expected-size", type=click.IntRange(min=0), help="Size the blob must have.")
@click.option("--expected-digest", metavar="DIGEST", help="Digest the blob must have.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Label; repeatable.")
@click.option(
    "-i",
    "--input",
    "source",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read from FILE instead of stdin.",
)
@pass_settings
def ingest(
    settings: _Settings,
    ref: str,
    expected_size: int | None,
    expected_digest: str | None,
    labels: tuple[str, ...],
    source: Path | None,
) -> None:
    """Store stdin (or FILE) as a blob through the ingest REF; prints its digest.

    An interrupted ingest on REF resumes; while another writer holds REF
    this waits and retries.
    """
    parsed = _parse_labels(labels)
    store = settings.store()
    size = expected_size
    if source is not None and size is None:
        size = source.stat().st_size
    with (
        open(source, "rb") if source else sys.stdin.buffer as stream,
        _progress(ref, size) as progress,
    ):
        digest = write_blob(
            store,
            ref,
            stream,
            size=expected_size,
            digest=expected_digest,
            labels=parsed or None,
            progress=progress,
        )
    if settings.json:
        click.echo(json.dumps({"digest": digest, "ref": ref}))
    else:
        click.echo(digest)


@main.command()
@click.argument("regex", required=False)
@pass_settings
def active(settings: _Settings, regex: str | None) -> None:
    """List ingests in progress, optionally whose ref matches REGEX."""
    filters = [f"ref~={_quote(regex)}"] if regex else []
    statuses = settings.store().list_statuses(*filters)
    if settings.json:
        click.echo(json.dumps([_status_json(status) for status in statuses]))
        return
    _table(
        ["REF", "OFFSET", "TOTAL", "STARTED", "UPDATED"],
        (
            [
                s.ref,
                human_size(s.offset),
                human_size(s.total) if s.total else "-",
                human_age(s.started_at),
                human_age(s.updated_at),
            ]
            for s in statuses
        ),
    )


def _quote(value: str) -> str:
    """A filter value in double quotes, escaped the way the filter language reads it."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@main.command(name="rm")
@click.argument("digests", nargs=-1, required=True)
@pass_settings
def remove(settings: _Settings, digests: tuple[str, ...]) -> None:
    """Remove blobs from the namespace."""
    store = settings.store()
    _each(settings, digests, store.delete)


def _each(settings: _Settings, names: Iterable[str], act: Callable[[str], object]) -> None:
    """Act on each name, printing it when done and any failure on stderr.

    Exits with the first failure's status once every name had its turn.
    """
    failure: ContentdError | None = None
    for name in names:
        try:
            act(name)
        except ContentdError as exc:
            click.echo(f"contentd: {public_error(exc, passthrough_remote=True)}", err=True)
            failure = failure or exc
        else:
            if not settings.json:
                click.echo(name)
    if failure is not None:
        sys.exit(EXIT_CODES.get(classify(failure) or Unknown, 1))


@main.command()
@click.argument("digest")
@click.argument("labels", nargs=-1, required=True, metavar="KEY=VALUE...")
@pass_settings
def label(settings: _Settings, digest: str, labels: tuple[str, ...]) -> None:
    """Set labels on a blob; KEY= removes KEY."""
    parsed = _parse_labels(labels)
    info = settings.store().update(digest, parsed, [f"labels.{key}" for key in parsed])
    if settings.json:
        click.echo(json.dumps(_info_json(info)))
    else:
        click.echo(f"{digest}: {_labels_text(info.labels.items())}")


@main.command()
@click.argument("ref")
@pass_settings
def abort(settings: _Settings, ref: str) -> None:
    """Discard an ingest in progress."""
    settings.store().abort(ref)


def _check_json(check: BlobCheck) -> dict[str, Any]:
    return {
        "digest": check.digest,
        "state": check.state.value,
        "size": check.size,
        "found_digest": check.found_digest,
        "found_size": check.found_size,
        "namespaces": list(check.namespaces),
        "quarantined": check.quarantined,
    }


@main.command()
@click.option(
    "--quarantine",
    is_flag=True,
    help="Move bad blobs to ROOT/quarantine/ and drop their records (--root only).",
)
@pass_settings
def verify(settings: _Settings, quarantine: bool) -> None:
    """Hash every blob; report corrupt, unreadable and missing ones (and exit 12).

    With --root it checks every namespace's blobs on disk, safely while a
    daemon serves the same root, and --quarantine moves bad blobs aside so
    they can be stored again. Through a daemon it reads the namespace's blobs
    over the wire and can only report.
    """
    if quarantine and settings.root is None:
        raise click.UsageError("--quarantine needs --root: the Content API cannot move blobs")
    store = settings.store()
    if isinstance(store, LocalStore):
        report = store.verify(quarantine=quarantine)
    else:
        report = verify_namespace(store, settings.namespace)
    if settings.json:
        problems = [_check_json(check) for check in report.problems]
        click.echo(json.dumps({"checked": report.checked, "problems": problems}))
    else:
        if report.problems:
            _table(
                ["STATE", "DIGEST", "SIZE", "NAMESPACES", "QUARANTINED"],
                (
                    [
                        check.state.value,
                        check.digest,
                        human_size(check.size),
                        ",".join(check.namespaces) or "-",
                        check.quarantined or "-",
                    ]
                    for check in report.problems
                ),
            )
        plural = "" if report.checked == 1 else "s"
        click.echo(f"{report.checked} blob{plural} checked, {len(report.problems)} bad")
    if report.problems:
        raise DataLoss(
            f"{len(report.problems)} of {report.checked} blobs corrupt, unreadable or missing"
        )


# Garbage collection, leases and images


def _report_json(report: CollectionReport) -> dict[str, Any]:
    return {
        "content": report.content,
        "leases": report.leases,
        "ingests": report.ingests,
        "blobs": report.blobs,
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
        "dry_run": report.dry_run,
    }


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what a collection would remove; remove nothing.")
@pass_settings
def gc(settings: _Settings, dry_run: bool) -> None:
    """Collect garbage now, in every namespace; report what went.

    What no lease, image, root label, reference, repository or recent ingest
    keeps goes: content records, expired leases, ingests, then the bytes no
    namespace records. Works through the daemon or directly on --root (safe
    while a daemon serves it).
    """
    report = settings.store().collect(dry_run=dry_run)
    if settings.json:
        click.echo(json.dumps(_report_json(report)))
        return
    removed, freed = ("would remove", "would free") if dry_run else ("removed", "freed")
    click.echo(
        f"{removed} {report.content} content records, {report.leases} leases and "
        f"{report.ingests} ingests; {freed} {report.blobs} blobs "
        f"({human_size(report.bytes)}) in {report.seconds:.2f}s"
    )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta | None:
    """A duration as ctr takes one (``24h``, ``1h30m``, ``90s``); None for ``0`` (forever)."""
    if text.strip() == "0":
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text.strip():
        raise InvalidArgument(f"duration {text!r}: expected e.g. 24h, 1h30m, 90s or 0")
    return timedelta(seconds=sum(float(number) * _SECONDS[unit] for number, unit in parts))


def _lease_json(lease: Lease) -> dict[str, Any]:
    return {"id": lease.id, "created_at": _iso(lease.created_at), "labels": dict(lease.labels)}


@main.group()
def leases() -> None:
    """Leases: what they hold is kept from garbage collection while they live."""


@leases.command(name="ls")
@click.argument("filters", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="Print ids only.")
@pass_settings
def list_leases(settings: _Settings, filters: tuple[str, ...], quiet: bool) -> None:
    """List leases, optionally matching any of FILTERS (id==x, labels.k==v)."""
    found = settings.store().leases.list(*filters)
    if settings.json:
        click.echo(json.dumps([_lease_json(lease) for lease in found]))
    elif quiet:
        for lease in found:
            click.echo(lease.id)
    else:
        rows = ([x.id, _iso(x.created_at), _labels_text(x.labels.items())] for x in found)
        _table(["ID", "CREATED", "LABELS"], rows)


@leases.command(name="create")
@click.argument("labels", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--id", "lease_id", default="", help="The lease's id [default: one is made].")
@click.option(
    "-x",
    "--expires",
    default="24h",
    show_default=True,
    help="How long the lease lives (0: until deleted), as 24h, 1h30m or 90s.",
)
@pass_settings
def create_lease(settings: _Settings, labels: tuple[str, ...], lease_id: str, expires: str) -> None:
    """Create a lease; prints its id."""
    parsed = _parse_labels(labels)
    lifetime = parse_duration(expires)
    if lifetime is not None:
        parsed[EXPIRE_LABEL] = _iso((datetime.now(UTC) + lifetime).replace(microsecond=0))
    lease = settings.store().leases.create(lease_id, parsed)
    click.echo(json.dumps(_lease_json(lease)) if settings.json else lease.id)


@leases.command(name="rm")
@click.argument("ids", nargs=-1, required=True)
@click.option("--sync", is_flag=True, help="Return once a collection has run after the delete.")
@pass_settings
def remove_leases(settings: _Settings, ids: tuple[str, ...], sync: bool) -> None:
    """Delete leases (what they held becomes collectable unless something else keeps it)."""
    store = settings.store()
    _each(settings, ids, lambda lease_id: store.leases.delete(lease_id, sync=sync))


def _image_json(image: Image) -> dict[str, Any]:
    target = image.target
    return {
        "name": image.name,
        "target": {
            "media_type": target.media_type,
            "digest": target.digest,
            "size": target.size,
            "annotations": dict(target.annotations),
        },
        "labels": dict(image.labels),
        "created_at": _iso(image.created_at) if image.created_at else None,
        "updated_at": _iso(image.updated_at) if image.updated_at else None,
    }


@main.group()
def images() -> None:
    """Images: names for target manifests, kept (with what they reference) from collection."""


@images.command(name="ls")
@click.argument("filters", nargs=-1)
@click.option("-q", "--quiet", is_flag=True, help="Print names only.")
@pass_settings
def list_images(settings: _Settings, filters: tuple[str, ...], quiet: bool) -> None:
    """List images, optionally matching any of FILTERS (name==x, target.digest==d, labels.k)."""
    found = settings.store().images.list(*filters)
    if settings.json:
        click.echo(json.dumps([_image_json(image) for image in found]))
    elif quiet:
        for image in found:
            click.echo(image.name)
    else:
        _table(
            ["NAME", "TYPE", "DIGEST", "SIZE", "LABELS"],
            (
                [
                    image.name,
                    image.target.media_type,
                    image.target.digest,
                    human_size(image.target.size),
                    _labels_text(image.labels.items()),
                ]
                for image in found
            ),
        )


@images.command(name="tag")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Replace an image TARGET names already.")
@pass_settings
def tag_image(settings: _Settings, source: str, targets: tuple[str, ...], force: bool) -> None:
    """Name SOURCE's target (and labels) under each of TARGETS too."""
    store = settings.store()
    image = store.images.get(source)

    def tag(name: str) -> None:
        named = Image(name, image.target, image.labels)
        try:
            store.images.create(named)
        except AlreadyExists:
            if not force:
                raise
            store.images.update(named)

    _each(settings, targets, tag)


@images.command(name="rm")
@click.argument("names", nargs=-1, required=True)
@click.option("--sync", is_flag=True, help="Return once a collection has run after the delete.")
@pass_settings
def remove_images(settings: _Settings, names: tuple[str, ...], sync: bool) -> None:
    """Delete images (what they kept becomes collectable unless something else keeps it)."""
    store = settings.store()
    _each(settings, names, lambda name: store.images.delete(name, sync=sync))


# Images from registries


class _TransferDisplay:
    """What `pull` and `push` show: a bar per blob on a terminal, JSON events with --json,
    else nothing."""

    def __init__(self, as_json: bool) -> None:
        self._json = as_json
        self._bars: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> _TransferDisplay:
        if not self._json and sys.stderr.isatty():
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                DownloadColumn,
                Progress,
                TransferSpeedColumn,
            )

            self._bars = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                console=Console(stderr=True),
            )
            self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bars is not None:
            self._bars.stop()

    @property
    def on_event(self) -> Callable[[TransferEvent], None] | None:
        """What hears a transfer's events: None when nothing is shown."""
        return self if self._json or self._bars is not None else None

    @property
    def shows_progress(self) -> bool:
        """Whether bytes gone across are shown (``progress`` events), not only the steps."""
        return self._bars is not None

    def __call__(self, event: TransferEvent) -> None:
        if self._json:
            click.echo(json.dumps(event.as_json()))
            return
        bars = self._bars
        if bars is None or event.kind in ("resolved", "recorded", "pushed"):
            return
        task = self._tasks.get(event.digest)
        if task is None:
            label = event.ref.partition("-")[0]
            description = f"{label:<8} {event.digest.partition(':')[2][:12]}"
            task = self._tasks[event.digest] = bars.add_task(description, total=event.size)
        if event.kind in ("started", "progress"):
            bars.update(task, completed=event.offset)
        elif event.kind in ("done", "skipped"):
            bars.update(task, completed=event.size)


_T = TypeVar("_T")


def _shown(settings: _Settings, interrupted: str, run: Callable[[_TransferDisplay], _T]) -> _T:
    """Run a pull or a push with its display; Ctrl-C fails it as Canceled, saying `interrupted`."""
    try:
        with _TransferDisplay(settings.json) as display:
            return run(display)
    except KeyboardInterrupt:
        raise Canceled(interrupted) from None


def _registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options `pull` and `push` share: how to reach the registry, and how many at once."""
    options = [
        click.option("--plain-http", is_flag=True, help="Speak HTTP to the registry, not HTTPS."),
        click.option(
            "--tls-ca",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Trust the registry certificates these PEM CAs sign [default: the system's].",
        ),
        click.option(
            "--auth-file",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Credentials file [default: $REGISTRY_AUTH_FILE, then the usual ones].",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=DEFAULT_CONCURRENCY,
            show_default=True,
            help="Transfers at once.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command(name="pull")
@click.argument("reference")
@click.option("--platform", metavar="OS/ARCH[/VARIANT]", help="Of an index, the platform to pull.")
@click.option("--all-platforms", is_flag=True, help="Of an index, pull every platform.")
@_registry_options
@click.option("--name", help="Record the image under NAME [default: the reference].")
@click.option(
    "--fetch-locally",
    is_flag=True,
    help="Through a daemon: download here and write through the Content API, "
    "rather than have the daemon download the image itself.",
)
@pass_settings
def pull_image(
    settings: _Settings,
    /,
    reference: str,
    platform: str | None,
    all_platforms: bool,
    name: str | None,
    fetch_locally: bool,
    **registry: Any,
) -> None:
    """Pull an image from a registry into the store and record it as an image.

    REFERENCE is host[:port]/repository[:tag|@digest]. Blobs already stored
    are not fetched, blobs another process is fetching are waited for, and an
    interrupted pull resumes where it stopped when run again.

    Through a contentd daemon, the daemon downloads the image itself (sent
    the --tls-ca certificates and the credentials found here); through one
    without that service (containerd), or with --fetch-locally, the download
    happens here and the bytes are written through the daemon.
    """
    if platform is not None and all_platforms:
        raise click.UsageError("give --platform or --all-platforms, not both")
    from ._pull import pull  # noqa: PLC0415

    store = settings.store()
    image = _shown(
        settings,
        f"pulling {reference}: interrupted; pull again to resume",
        lambda display: pull(
            store,
            reference,
            name=name,
            platform=platform,
            all_platforms=all_platforms,
            on_event=display.on_event,
            progress=display.shows_progress,
            fetch_locally=fetch_locally,
            **registry,
        ),
    )
    if not settings.json:
        click.echo(f"{image.name}@{image.target.digest}")


@main.command(name="push")
@click.argument("reference")
@click.option(
    "--from",
    "source",
    metavar="NAME",
    help="The stored image to push [default: the image named REFERENCE, as pull records it].",
)
@click.option(
    "--platform",
    metavar="OS/ARCH[/VARIANT]",
    help="Of an index, push the manifests for this platform only [default: all].",
)
@_registry_options
@pass_settings
def push_image(
    settings: _Settings,
    /,
    reference: str,
    source: str | None,
    platform: str | None,
    **registry: Any,
) -> None:
    """Push an image of the store to a registry as REFERENCE; prints REFERENCE@DIGEST.

    REFERENCE is host[:port]/repository[:tag|@digest]. What the registry has
    is not sent, blobs in another of its repositories are mounted from there,
    manifests go once what they name is there, and the tag last.
    """
    from ._push import push  # noqa: PLC0415

    store = settings.store()
    target = _shown(
        settings,
        f"pushing {reference}: interrupted",
        lambda display: push(
            store,
            reference,
            source=source,
            platform=platform,
            on_event=display.on_event,
            progress=display.shows_progress,
            **registry,
        ),
    )
    if not settings.json:
        click.echo(f"{reference}@{target.digest}")
