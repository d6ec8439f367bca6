"""Upload sessions' open writers when requests interleave with the closing of one.

The registry's requests run on one event loop and its store calls on a thread
pool, so a request can arrive while the writer of its own upload is being
closed to make room for another. These tests hold a writer's close on the pool
until the interleaving they need is in place.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest

from contentd import errdefs
from contentd.content import BackedWriter, LocalStore, open_store
from contentd.daemon.registry import UploadSessions, upload_ref
from contentd.daemon.registry.errors import _ANSWER_HEADERS

REPOSITORY = "robust/app"


class HeldCloses:
    """Runs store calls on a thread pool, each writer close only once released."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        self._pool = pool
        self.closing = threading.Event()
        self.released = threading.Event()

    def __call__(self, function: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        call = functools.partial(function, *args)
        owner = getattr(function, "__self__", None)
        if isinstance(owner, BackedWriter) and function.__name__ == "close":
            call = functools.partial(self._held, call)
        return asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _held(self, call: Callable[[], Any]) -> Any:
        self.closing.set()
        assert self.released.wait(30), "the test never released the close"
        return call()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with open_store(tmp_path / "root") as opened:
        yield opened


async def _until(event: threading.Event) -> None:
    for _ in range(3000):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


def test_a_request_for_an_upload_whose_writer_is_closing_waits_and_reopens_it(
    store: LocalStore,
) -> None:
    async def scenario(run: HeldCloses) -> tuple[str, int]:
        sessions = UploadSessions(store, run, idle_timeout=3600, max_open=1)
        first, _ = await sessions.start(REPOSITORY)
        async with sessions.use(REPOSITORY, first) as entry:
            assert entry.writer is not None
            entry.writer.write(b"x" * 1000)
        # A second upload closes the first's writer to make room; its close is held.
        second = asyncio.create_task(sessions.start(REPOSITORY))
        await _until(run.closing)

        async def write_more() -> int:
            async with sessions.use(REPOSITORY, first) as entry:
                assert entry.writer is not None
                entry.writer.write(b"y" * 500)
                return entry.writer.offset

        resumed = asyncio.create_task(write_more())
        try:
            await asyncio.sleep(0.2)  # time enough to reach the store, were it not waiting
            assert not resumed.done(), resumed.result()
        finally:
            run.released.set()
        await second
        offset = await resumed
        await sessions.close_all()
        return first, offset

    with futures.ThreadPoolExecutor(4) as pool:
        first, offset = asyncio.run(scenario(HeldCloses(pool)))
    assert offset == 1500
    assert store.status(upload_ref(REPOSITORY, first)).offset == 1500


def _sessions_on(
    store: LocalStore, pool: futures.ThreadPoolExecutor, **options: Any
) -> UploadSessions:
    def run(function: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(pool, functools.partial(function, *args))

    return UploadSessions(store, run, idle_timeout=3600, **options)


def test_without_held_writers_each_request_leaves_the_ref_free(store: LocalStore) -> None:
    async def scenario(sessions: UploadSessions) -> list[int]:
        session, _ = await sessions.start(REPOSITORY)
        ref = upload_ref(REPOSITORY, session)
        store.writer(ref).close()  # free between requests: another daemon could take it
        offsets = []
        for piece in (b"a" * 1000, b"b" * 234):
            async with sessions.use(REPOSITORY, session) as entry:
                assert entry.writer is not None
                entry.writer.write(piece)
            offsets.append(store.status(ref).offset)
            store.writer(ref).close()
        return offsets

    with futures.ThreadPoolExecutor(4) as pool:
        sessions = _sessions_on(store, pool, hold_writers=False)
        offsets = asyncio.run(scenario(sessions))
    assert offsets == [1000, 1234]


def test_a_ref_another_process_holds_is_waited_for_then_416_with_the_range(
    store: LocalStore,
) -> None:
    async def scenario(sessions: UploadSessions) -> Exception:
        session, _ = await sessions.start(REPOSITORY)
        async with sessions.use(REPOSITORY, session) as entry:
            assert entry.writer is not None
            entry.writer.write(b"x" * 700)
        held = store.writer(upload_ref(REPOSITORY, session))  # as another daemon's request
        try:
            started = time.monotonic()
            with pytest.raises(errdefs.OutOfRange) as refused:
                async with sessions.use(REPOSITORY, session):
                    raise AssertionError("the ref was held")
            assert 0.3 <= time.monotonic() - started < 5
            # Once the other request is done, the upload goes on from where it left it.
            release = asyncio.get_running_loop().call_later(0.1, held.close)
            async with sessions.use(REPOSITORY, session) as entry:
                assert entry.writer is not None
                assert entry.writer.offset == 700
            release.cancel()
        finally:
            held.close()
        return refused.value

    with futures.ThreadPoolExecutor(4) as pool:
        sessions = _sessions_on(store, pool, hold_writers=False, busy_wait=0.3)
        error = asyncio.run(scenario(sessions))
    answer = errdefs.to_http(error)
    assert (answer.status, json.loads(answer.body)["errors"][0]["code"]) == (
        416,
        "BLOB_UPLOAD_INVALID",
    )
    assert _ANSWER_HEADERS[error]["Range"] == "0-699"
