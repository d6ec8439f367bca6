"""Pull an image from a registry into a store, as containerd's fetch does.

    from contentd.client import RemoteStore, pull

    with RemoteStore("unix:///run/contentd/contentd.sock") as store:
        image = pull(store, "registry.example/team/app:v1")

The reference is resolved (HEAD on the manifests endpoint), then the tree
under it (index, manifests, configs, layers) is fetched with at most
`concurrency` downloads at once. Each download goes through `write_blob`
under the ingest ref containerd's fetch uses (``layer-sha256:...``), so a
blob another process is fetching is waited for and not fetched again, a
blob stored meanwhile is not fetched at all, and an interrupted download
resumes with an HTTP Range from the offset its ingest holds. The store
verifies every size and digest when it commits. Parents are labelled with
their children (``containerd.io/gc.ref.content.*``) and every blob with
where it came from (``containerd.io/distribution.source.<host>``).

Everything happens under a lease, so a collection meanwhile takes nothing
of a pull in progress; the image (name -> target) is recorded under it and
is the collection root afterwards, and the lease is deleted. A pull that
fails or is interrupted leaves its lease to expire (after a day, as
containerd's leases do), so its ingests survive for the next pull to resume.

Given a store on a daemon that serves contentd's Transfer service, the
daemon fetches the image itself, into its own store, with this same code,
and streams the events back (`RemoteStore.pull_in_daemon`): the bytes go from
the registry to the daemon's disk and never cross the Content API's Write
path. `fetch_locally` (or a daemon without the service, containerd) fetches
here instead and writes through the daemon, as containerd 1.6's fetch does.
A store whose view names a lease (`with_lease`) pulls under that lease, which
then keeps what was fetched, as containerd's `WithLease` does.

The fetching itself (`contentd.client._fetch`) is loaded only where it runs:
a pull through a daemon loads no HTTP client.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from contentd.content import Image, MetadataStore
from contentd.errdefs import InvalidArgument, RemoteError, Unimplemented

from ._auth import Credentials, find_credentials
from ._platforms import Platform, PlatformMatcher, default_platform, parse_platform
from ._reference import Reference, parse_reference
from ._registry_options import RegistryOptions
from ._transfer import DEFAULT_CONCURRENCY, EventHandler, check_concurrency, run_transfer


@dataclass(frozen=True)
class PullSpec:
    """What to pull and how, checked: what a daemon is asked to pull on a caller's behalf.

    `platform` None pulls every platform of an index.
    """

    reference: Reference
    name: str
    platform: Platform | None
    options: RegistryOptions
    concurrency: int


@runtime_checkable
class DaemonPuller(Protocol):
    """A store whose daemon can fetch an image itself (a RemoteStore)."""

    def pull_in_daemon(
        self, spec: PullSpec, on_event: EventHandler | None, progress: bool = True
    ) -> Image:
        """Have the daemon pull `spec`, telling `on_event` (of progress too if `progress`);
        Unimplemented (a RemoteError) if it cannot."""
        ...


def pull(
    store: MetadataStore,
    reference: str,
    *,
    name: str | None = None,
    platform: str | Platform | None = None,
    all_platforms: bool = False,
    plain_http: bool = False,
    tls_ca: str | os.PathLike[str] | None = None,
    auth_file: str | os.PathLike[str] | None = None,
    credentials: Credentials | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_event: EventHandler | None = None,
    progress: bool = True,
    fetch_locally: bool = False,
) -> Image:
    """Pull the image `reference` (``host[:port]/repository[:tag|@digest]``) into `store`.

    Returns the image recorded in the store's namespace: `name` (by default
    the reference, normalised) naming the resolved target. Of an index, only
    the manifest for `platform` (``os/arch[/variant]``, by default this
    machine's) is fetched, or every one with `all_platforms`. `plain_http`
    speaks HTTP instead of HTTPS; `tls_ca` is a PEM file of CAs to trust in
    place of the system's; credentials come from `credentials`, `auth_file`,
    or the usual auth files. `on_event` hears of each step (see `TransferEvent`),
    from the pull's threads, one event at a time, and of each blob's bytes as
    they are written unless `progress` is False.

    Through a daemon serving contentd's Transfer service the daemon fetches
    the image itself (sent the CAs and the credentials found here, never the
    files' names); `fetch_locally` fetches here and writes through the daemon.

    Errors are `contentd.errdefs` classes: the registry's own (NotFound,
    Unauthenticated...), DataLoss (reason DIGEST_INVALID or SIZE_INVALID)
    for content that does not match its descriptor, Canceled if interrupted.
    """
    check_concurrency(concurrency)
    if all_platforms and platform is not None:
        raise InvalidArgument("give a platform or all platforms, not both")
    parsed = parse_reference(reference)
    wanted = None
    if not all_platforms:
        wanted = (parse_platform(platform) if isinstance(platform, str) else platform) or (
            default_platform()
        )
    options = RegistryOptions(
        plain_http=plain_http, tls_ca=tls_ca, auth_file=auth_file, credentials=credentials
    )
    spec = PullSpec(parsed, name or str(parsed), wanted, options, concurrency)
    if isinstance(store, DaemonPuller) and not fetch_locally:
        try:
            return store.pull_in_daemon(_for_daemon(spec), on_event, progress)
        except Unimplemented as exc:
            if not isinstance(exc, RemoteError):
                raise
            # A daemon without the Transfer service (containerd): fetch here.
    return run_transfer(pull_in(store, spec, on_event, progress))


def _for_daemon(spec: PullSpec) -> PullSpec:
    """`spec` as a daemon may be given it: the CAs' and credentials' contents, not file names."""
    options = spec.options
    tls_ca_pem = options.tls_ca_pem
    if tls_ca_pem is None and options.tls_ca is not None:
        try:
            with open(options.tls_ca, "rb") as ca:
                tls_ca_pem = ca.read()
        except OSError as exc:
            raise InvalidArgument(f"TLS CA file {options.tls_ca}: {exc.strerror}") from None
    credentials = options.credentials
    if credentials is None and options.read_auth_files:
        reference = spec.reference
        credentials = find_credentials(
            reference.api_host, reference.repository, auth_file=options.auth_file
        )
    sent = RegistryOptions(
        plain_http=options.plain_http,
        credentials=credentials,
        tls_ca_pem=tls_ca_pem,
        read_auth_files=False,
    )
    return PullSpec(spec.reference, spec.name, spec.platform, sent, spec.concurrency)


def pull_in(
    store: MetadataStore, spec: PullSpec, on_event: EventHandler | None, progress: bool = True
) -> Coroutine[Any, Any, Image]:
    """The pull of `spec` into `store`, to run on an event loop (a daemon runs it on its own)."""
    from ._fetch import Fetch  # noqa: PLC0415 (see the module)

    matcher = None if spec.platform is None else PlatformMatcher(spec.platform)
    job = Fetch(
        store,
        spec.reference,
        spec.name,
        matcher,
        spec.options,
        spec.concurrency,
        on_event,
        progress,
    )
    return job.run()
