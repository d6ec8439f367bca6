"""Push an image from a store to a registry, as containerd's push does.

    from contentd.client import RemoteStore, push

    with RemoteStore("unix:///run/contentd/contentd.sock") as store:
        pushed = push(store, "registry.example/team/app:v1", source="app")

The image is looked up in the store's images (`source`, by default the
reference as a pull records it), and the tree under its target is sent
children first: configs and layers at most `concurrency` at once, each
manifest once everything it names is there, the index after its manifests,
and the root last, under the reference's tag (or its digest). Of each blob
the registry is asked first (HEAD): what it has is not sent. A blob
labelled as being in another repository of the same registry
(``containerd.io/distribution.source.<host>``, which a pull sets) is asked
for by a cross-repository mount; what the registry cannot mount, and every
other blob, is uploaded from the store's reader a chunk at a time: in one
PUT when small, in a PATCH and a PUT when large.

A push writes nothing to the store but labels: each blob pushed is
labelled as being in the repository pushed to, as containerd does, so a
later push to that registry mounts it. When one transfer fails for good
the others are canceled and the call returns only once every thread and
connection of the push has ended (`contentd.client._transfer`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Final

from contentd.content import Descriptor, MetadataStore, ReaderAt
from contentd.errdefs import DataLoss, InvalidArgument, NotFound

from ._auth import Credentials
from ._manifests import (
    distribution_source_label,
    is_index,
    is_manifest,
    kind,
    matching_children,
    parse_manifest,
)
from ._platforms import Platform, PlatformMatcher, parse_platform
from ._reference import Reference, parse_reference
from ._registry import RegistryClient
from ._registry_options import RegistryOptions
from ._transfer import (
    CHUNK,
    DEFAULT_CONCURRENCY,
    EventHandler,
    Transfer,
    TransferEvent,
    check_concurrency,
    first_error,
    info_or_none,
    read_all,
    run_transfer,
)

#: Blobs larger than this go up in a PATCH and an empty PUT, not in one PUT.
MONOLITHIC_MAX: Final = 1 << 20


def push(
    store: MetadataStore,
    reference: str,
    *,
    source: str | None = None,
    platform: str | Platform | None = None,
    plain_http: bool = False,
    tls_ca: str | os.PathLike[str] | None = None,
    auth_file: str | os.PathLike[str] | None = None,
    credentials: Credentials | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_event: EventHandler | None = None,
    progress: bool = True,
) -> Descriptor:
    """Push the image `source` of `store` to `reference` (``host[:port]/repository[:tag|@digest]``).

    `source` names an image of the store's namespace (by default the
    reference, normalised, as `pull` records it). Of an index, every
    manifest is pushed, or with `platform` (``os/arch[/variant]``) those for
    it and those without a platform, as containerd's push with a platform
    does (the registry may then refuse the index for the manifests it lacks).
    A reference with a digest must name the image's target. Returns the
    target pushed. Registry options, `on_event` and `progress` are as for `pull`.

    Errors are `contentd.errdefs` classes: NotFound for an image, or content
    it names, not in the store; the registry's own (Unauthenticated,
    InvalidArgument...), naming the content it refused; Canceled if interrupted.
    """
    check_concurrency(concurrency)
    parsed = parse_reference(reference)
    matcher = None
    if platform is not None:
        matcher = PlatformMatcher(
            parse_platform(platform) if isinstance(platform, str) else platform
        )
    options = RegistryOptions(
        plain_http=plain_http, tls_ca=tls_ca, auth_file=auth_file, credentials=credentials
    )
    job = _Push(
        store, parsed, source or str(parsed), matcher, options, concurrency, on_event, progress
    )
    return run_transfer(job.run())


class _Push(Transfer):
    """One push: its registry client and a task per content, children before parents."""

    def __init__(
        self,
        store: MetadataStore,
        reference: Reference,
        source: str,
        matcher: PlatformMatcher | None,
        options: RegistryOptions,
        concurrency: int,
        on_event: EventHandler | None,
        progress: bool,
    ) -> None:
        super().__init__(store, concurrency, on_event, "contentd-push", progress)
        self._reference = reference
        self._source = source
        self._matcher = matcher
        self._options = options
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._registry: RegistryClient | None = None

    async def run(self) -> Descriptor:
        target = await self.run_threads(self._push())
        self.emit(
            TransferEvent(
                "pushed", target.digest, target.size, target.media_type, name=str(self._reference)
            )
        )
        return target

    async def _push(self) -> Descriptor:
        image = await self.call(self.store.images.get, self._source)
        target = image.target
        if self._reference.digest and self._reference.digest != target.digest:
            raise InvalidArgument(
                f"pushing {self._source} to {self._reference}: the image is {target.digest}",
                reason="REFERENCE_INVALID",
            )
        self.emit(
            TransferEvent(
                "resolved", target.digest, target.size, target.media_type, name=self._source
            )
        )
        async with RegistryClient(self._reference.api_host, self._options) as registry:
            self._registry = registry
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    self._spawn(target, self._reference.tag or target.digest)
            except BaseExceptionGroup as failed:
                raise first_error(failed) from None
        return target

    def _spawn(self, descriptor: Descriptor, reference: str) -> asyncio.Task[None]:
        """The task pushing `descriptor` (one per content, however many parents name it)."""
        task = self._tasks.get(descriptor.digest)
        if task is None:
            assert self._group is not None
            task = self._group.create_task(self._handle(descriptor, reference))
            self._tasks[descriptor.digest] = task
        return task

    async def _handle(self, descriptor: Descriptor, reference: str) -> None:
        if not (is_index(descriptor.media_type) or is_manifest(descriptor.media_type)):
            await self._push_blob(descriptor)
            return
        try:
            data = await self.call(read_all, self.store, descriptor.digest)
        except NotFound:
            raise self._missing(descriptor) from None
        children = matching_children(parse_manifest(descriptor, data), self._matcher)
        # Only once everything it names is there: a registry refuses a manifest otherwise.
        await asyncio.gather(
            *(self._spawn(child.descriptor, child.descriptor.digest) for child in children)
        )
        await self._push_manifest(descriptor, reference, data)

    def _missing(self, descriptor: Descriptor) -> NotFound:
        return NotFound(
            f"pushing {self._source} to {self._reference}: {kind(descriptor.media_type)} "
            f"{descriptor.digest} is not in the store (an index's manifest for a platform "
            "not pulled: pull it with all platforms, or push one platform)",
            metadata={"digest": descriptor.digest},
        )

    @property
    def _repository(self) -> str:
        return self._reference.repository

    async def _push_manifest(self, descriptor: Descriptor, reference: str, data: bytes) -> None:
        assert self._registry is not None
        async with self.slots:
            if await self._registry.exists(self._repository, descriptor, reference):
                self.emit(self.event("skipped", descriptor, reason="exists"))
            else:
                self.emit(self.event("started", descriptor))
                await self._registry.put_manifest(self._repository, reference, descriptor, data)
                self.emit(self.event("done", descriptor))
        await self._record(descriptor)

    async def _push_blob(self, descriptor: Descriptor) -> None:
        assert self._registry is not None
        registry, repository = self._registry, self._repository
        async with self.slots:
            if await registry.exists(repository, descriptor):
                self.emit(self.event("skipped", descriptor, reason="exists"))
                await self._record(descriptor)
                return
            info = await self.call(info_or_none, self.store, descriptor.digest)
            if info is None:
                raise self._missing(descriptor)
            location = None
            key, _ = distribution_source_label(self._reference.host, repository)
            mountable = [r for r in info.labels.get(key, "").split(",") if r and r != repository]
            if mountable:
                location = await registry.mount_blob(repository, descriptor, mountable[0])
                if location is None:
                    self.emit(
                        self.event("skipped", descriptor, reason="mounted", name=mountable[0])
                    )
                    await self._record(descriptor)
                    return
            if location is None:
                location = await registry.start_upload(repository, descriptor)
            self.emit(self.event("started", descriptor))
            reader = await self.call(self.store.reader_at, descriptor.digest)
            try:
                await registry.upload_blob(
                    repository,
                    location,
                    descriptor,
                    lambda: self._chunks(reader, descriptor),
                    stream=descriptor.size > MONOLITHIC_MAX,
                )
            finally:
                await self.call(reader.close)
            self.emit(self.event("done", descriptor))
        await self._record(descriptor)

    async def _chunks(self, reader: ReaderAt, descriptor: Descriptor) -> AsyncIterator[bytes]:
        """The blob's bytes from the store, a chunk at a time, from its start."""
        told = self.progress(descriptor)
        offset = 0
        while offset < descriptor.size:
            chunk = await self.call(reader.read_at, min(CHUNK, descriptor.size - offset), offset)
            if not chunk:
                raise DataLoss(
                    f"{kind(descriptor.media_type)} {descriptor.digest}: the store holds "
                    f"{offset} of its {descriptor.size} bytes",
                    reason="SIZE_INVALID",
                )
            offset += len(chunk)
            yield chunk
            if told is not None:
                told(offset)

    async def _record(self, descriptor: Descriptor) -> None:
        """Label the content as being in the repository pushed to, if the store has it."""
        info = await self.call(info_or_none, self.store, descriptor.digest)
        if info is not None:
            await self.record_source(self.store, info, self._reference.host, self._repository)
