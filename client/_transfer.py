"""What pulls and pushes share: their events, their threads, and how a failure stops them.

A transfer runs on an asyncio event loop of its own (aiohttp's client);
the store's calls run on a small pool of threads beside it, one per
transfer at a time, so the same code drives a daemon over gRPC and a store
in the process. When one transfer fails for good the others are canceled,
and the call returns only once every thread and connection has ended.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Final, TypeVar

from contentd.content import Descriptor, Info, MetadataStore
from contentd.errdefs import Canceled, InvalidArgument, NotFound

from ._manifests import distribution_source_label, ref_key

#: Transfers at once, by default.
DEFAULT_CONCURRENCY: Final = 4
#: Bytes handed between the store and the registry at a time.
CHUNK: Final = 1 << 20

_T = TypeVar("_T")


@dataclass(frozen=True)
class TransferEvent:
    """Something that happened in a pull or a push, for progress displays and ``--json``.

    `kind` is one of:
    - ``resolved``: the image `name` names `digest` (a pull: in the registry;
      a push: in the store);
    - ``started``: the transfer of `digest` began at byte `offset` (past 0: a
      pull resumed);
    - ``progress``: `offset` bytes of `digest` have gone across;
    - ``done``: `digest` was transferred;
    - ``skipped``: `digest` was not transferred; `reason` says why: a pull's
      namespace had it (``present``) or the store had it by the time the
      download would have begun (``stored``); a push's registry had it
      (``exists``) or took it from another of its repositories (``mounted``,
      `name` the repository);
    - ``recorded``: a pull recorded the image `name` as naming `digest`;
    - ``pushed``: a push made the reference `name` name `digest` in the registry.
    """

    kind: str
    digest: str
    size: int = 0
    media_type: str = ""
    ref: str = ""
    offset: int = 0
    name: str = ""
    reason: str = ""

    def as_json(self) -> dict[str, Any]:
        """The event as a flat object, without the fields it does not use."""
        return {"event": self.kind} | {
            key: value for key, value in asdict(self).items() if value and key != "kind"
        }


EventHandler = Callable[[TransferEvent], None]


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise InvalidArgument(f"concurrency {concurrency}: must be at least 1")


def run_transfer(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run `coroutine` on an event loop of its own (in a thread if this one runs a loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with ThreadPoolExecutor(1, thread_name_prefix="contentd-transfer-loop") as runner:
        return runner.submit(asyncio.run, coroutine).result()


def first_error(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a failed transfer reports: the first of its parts' that failed for good."""
    leaves: list[BaseException] = []

    def collect(group: BaseExceptionGroup[BaseException]) -> None:
        for error in group.exceptions:
            if isinstance(error, BaseExceptionGroup):
                collect(error)
            else:
                leaves.append(error)

    collect(failed)
    for error in leaves:
        if not isinstance(error, Canceled):
            return error
    return leaves[0]


def info_or_none(store: MetadataStore, digest: str) -> Info | None:
    try:
        return store.info(digest)
    except NotFound:
        return None


def read_all(store: MetadataStore, digest: str) -> bytes:
    with store.reader_at(digest) as reader:
        return reader.read()


class Transfer:
    """One pull or push: its store, its threads, its window of transfers, its events.

    `run_threads` holds the threads and the window for the length of a
    coroutine; `in_thread` runs the store's calls there, so that a canceled
    transfer waits for its thread to stop before it is gone.
    """

    def __init__(
        self,
        store: MetadataStore,
        concurrency: int,
        on_event: EventHandler | None,
        thread_name: str,
        progress: bool = True,
    ) -> None:
        self.store = store
        self.concurrency = concurrency
        self.cancel = threading.Event()
        self._on_event = on_event
        self._progress = progress and on_event is not None
        self._events = threading.Lock()
        self._thread_name = thread_name
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None

    def emit(self, event: TransferEvent) -> None:
        if self._on_event is not None:
            with self._events:
                self._on_event(event)

    def progress(self, descriptor: Descriptor) -> Callable[[int], None] | None:
        """What tells of `descriptor`'s bytes gone across (``progress`` events), if anyone
        listens for them."""
        if not self._progress:
            return None
        return lambda offset: self.emit(self.event("progress", descriptor, offset=offset))

    def event(self, what: str, descriptor: Descriptor, **fields: Any) -> TransferEvent:
        """An event about `descriptor`, named by the ref key containerd gives it."""
        return TransferEvent(
            what,
            descriptor.digest,
            descriptor.size,
            descriptor.media_type,
            ref=ref_key(descriptor),
            **fields,
        )

    async def run_threads(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Await `work` with the transfer's threads; every thread has ended when this returns."""
        self._slots = asyncio.Semaphore(self.concurrency)
        # Room for a thread per transfer, and for the short calls of the tasks waiting.
        self._executor = ThreadPoolExecutor(
            self.concurrency + 2, thread_name_prefix=self._thread_name
        )
        try:
            return await work
        finally:
            self.cancel.set()
            executor, self._executor = self._executor, None
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)

    @property
    def slots(self) -> asyncio.Semaphore:
        """The window: held by each transfer of bytes while it runs."""
        assert self._slots is not None
        return self._slots

    async def in_thread(
        self, work: Callable[[], _T], on_cancel: Callable[[], None] | None = None
    ) -> _T:
        """`work()` on the transfer's threads; if canceled, stop it and wait until it has."""
        assert self._executor is not None
        future = asyncio.wrap_future(self._executor.submit(work))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.cancel.set()
            if on_cancel is not None:
                on_cancel()
            await asyncio.wait([future])
            if not future.cancelled():
                future.exception()  # the thread's Canceled: expected, and not the transfer's error
            raise

    async def call(self, function: Callable[..., _T], *args: Any) -> _T:
        return await self.in_thread(lambda: function(*args))

    async def record_source(
        self, store: MetadataStore, info: Info, host: str, repository: str
    ) -> None:
        """Label `info`'s blob as being in `repository` of `host` too, as containerd does."""
        key, _ = distribution_source_label(host, repository)
        key, merged = distribution_source_label(host, repository, info.labels.get(key, ""))
        if info.labels.get(key) != merged:
            await self.call(store.update, info.digest, {key: merged}, [f"labels.{key}"])
