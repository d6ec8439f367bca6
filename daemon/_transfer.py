"""contentd.services.transfer.v1.Transfer: pulls the daemon fetches itself.

A client's pull through the Content API downloads every blob and sends it on
in WRITE messages; through this service the daemon downloads the image into
its own store with the client's own pull code (`contentd.client._pull`, the
daemonless path) and streams only the events back.

Each pull runs on an event loop in a thread of its own, beside the call's
server thread, which passes its events on. At most `max_transfers` run at
once; more are refused at once with RESOURCE_EXHAUSTED (TOO_MANY_TRANSFERS),
as Write streams are. A pull ends with its call: when the caller cancels or
leaves, or when the daemon stops, its task is canceled, and the call returns
only once the pull's threads and connections have ended. What it had fetched
stays in its ingests, under its lease, for the next pull to resume.

The caller sends the registry's CAs and credentials in the request; the
daemon reads no auth file, and logs neither.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Final

import grpc

from contentd.client._auth import Credentials
from contentd.client._platforms import default_platform, parse_platform
from contentd.client._pull import PullSpec, pull_in
from contentd.client._reference import parse_reference
from contentd.client._registry_options import RegistryOptions
from contentd.client._transfer import DEFAULT_CONCURRENCY, TransferEvent, check_concurrency
from contentd.content import Image, MetadataStore
from contentd.errdefs import (
    TOO_MANY_TRANSFERS,
    Canceled,
    InvalidArgument,
    RemoteError,
    ResourceExhausted,
    find,
)
from contentd.proto import transfer_pb2 as api
from contentd.proto.wire import image_message

from ._boundary import streaming
from ._requests import request_headers

_log = logging.getLogger("contentd.daemon")

#: Transfers at once, by default.
DEFAULT_MAX_TRANSFERS: Final = 16


def _event_message(event: TransferEvent, image: Image | None = None) -> api.PullEvent:
    message = api.PullEvent(
        kind=event.kind,
        digest=event.digest,
        size=event.size,
        media_type=event.media_type,
        ref=event.ref,
        offset=event.offset,
        name=event.name,
        reason=event.reason,
    )
    if image is not None:
        message.image.CopyFrom(image_message(image))
    return message


def _spec(request: api.PullRequest) -> PullSpec:
    """The pull a request asks for, checked as `contentd.client.pull` checks its arguments."""
    concurrency = request.concurrency or DEFAULT_CONCURRENCY
    check_concurrency(concurrency)
    if request.all_platforms and request.platform:
        raise InvalidArgument("give a platform or all platforms, not both")
    reference = parse_reference(request.reference)
    platform = None
    if not request.all_platforms:
        platform = parse_platform(request.platform) if request.platform else default_platform()
    credentials = None
    if request.HasField("credentials"):
        credentials = Credentials(request.credentials.username, request.credentials.password)
    options = RegistryOptions(
        plain_http=request.plain_http,
        tls_ca_pem=request.tls_ca or None,
        credentials=credentials,
        read_auth_files=False,
    )
    return PullSpec(reference, request.name or str(reference), platform, options, concurrency)


def _in_own_words(error: BaseException) -> BaseException:
    """The registry's errors as the caller's to see: a pull through the daemon answers as a
    pull in the caller's process would, with the registry's words."""
    found = find(error)
    if isinstance(found, RemoteError):
        return found.error_class()(found.message, reason=found.reason, metadata=found.metadata)
    return error


class _Running:
    """One pull on its event loop's thread: its events queued for the call's thread."""

    def __init__(
        self, store: MetadataStore, spec: PullSpec, events: api.PullRequest.Events
    ) -> None:
        self._spec = spec
        self._store = store
        #: Which events the caller asked for; those it did not are never made.
        self._asked = events
        self.events: queue.SimpleQueue[TransferEvent | Image | BaseException] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Image] | None = None
        self._canceled = False
        self._thread = threading.Thread(target=self._run, name="contentd-transfer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _heard(self, event: TransferEvent) -> None:
        # The last event goes out with the image, once the pull has returned it.
        if event.kind != "recorded":
            self.events.put(event)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            with self._guard:
                heard = None if self._asked == api.PullRequest.LAST else self._heard
                progress = self._asked == api.PullRequest.ALL
                task = loop.create_task(pull_in(self._store, self._spec, heard, progress))
                self._loop, self._task = loop, task
                if self._canceled:
                    task.cancel()
            self.events.put(loop.run_until_complete(task))
        except asyncio.CancelledError:
            # The caller left, or the daemon is stopping: the ingests stay for the next pull.
            self.events.put(Canceled(f"pulling {self._spec.reference}: canceled"))
        except BaseException as exc:  # handed to the call's thread to answer
            self.events.put(exc)
        finally:
            with self._guard:
                self._loop = None
            loop.run_until_complete(loop.shutdown_asyncgens())
            # The resolver's threads too: nothing of the pull outlives its call.
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def cancel(self) -> None:
        """Cancel the pull (from any thread); it ends soon after, keeping its ingests."""
        with self._guard:
            self._canceled = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)

    def join(self) -> None:
        self._thread.join()


class TransferService:
    """Pulls into the request's namespace (under its lease, if it names one)."""

    def __init__(self, store: MetadataStore, max_transfers: int = DEFAULT_MAX_TRANSFERS) -> None:
        self._store = store
        self._max_transfers = max_transfers
        self._guard = threading.Lock()
        self._running: set[_Running] = set()
        self._stopping = False

    def _admit(self, running: _Running) -> None:
        with self._guard:
            if self._stopping:
                raise Canceled("the daemon is stopping")
            if len(self._running) >= self._max_transfers:
                raise ResourceExhausted(
                    f"{self._max_transfers} transfers in progress, the daemon's limit; retry",
                    reason=TOO_MANY_TRANSFERS,
                    metadata={"limit": str(self._max_transfers)},
                )
            self._running.add(running)

    def _release(self, running: _Running) -> None:
        with self._guard:
            self._running.discard(running)

    @streaming
    def Pull(
        self, request: api.PullRequest, context: grpc.ServicerContext
    ) -> Iterator[api.PullEvent]:
        namespace, lease = request_headers(context)
        spec = _spec(request)
        store = self._store.with_namespace(namespace)
        if lease is not None:
            store = store.with_lease(lease)
        running = _Running(store, spec, request.events)
        self._admit(running)
        try:
            # Called when the call ends however it ends: a caller gone cancels the pull.
            context.add_callback(running.cancel)
            _log.info("pulling %s into namespace %s", spec.reference, namespace)
            running.start()
            try:
                while True:
                    item = running.events.get()
                    if isinstance(item, TransferEvent):
                        yield _event_message(item)
                        continue
                    if isinstance(item, Image):
                        target = item.target
                        recorded = TransferEvent(
                            "recorded",
                            target.digest,
                            target.size,
                            target.media_type,
                            name=item.name,
                        )
                        yield _event_message(recorded, item)
                        return
                    raise _in_own_words(item)
            finally:
                running.cancel()
                running.join()
        finally:
            self._release(running)

    def stop(self) -> None:
        """Cancel every pull in progress and refuse new ones: the daemon is stopping."""
        with self._guard:
            self._stopping = True
            running = list(self._running)
        for each in running:
            each.cancel()
