"""Images, as containerd has them: a name for a target descriptor, with labels.

An image is a root of garbage collection: its target, and whatever its
labels reference, are kept. Validation and messages follow containerd 1.6's
metadata store, so its clients see the answers they expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from contentd.errdefs import AlreadyExists, InvalidArgument, NotFound

from . import filters
from ._backends import MetadataBackend
from ._records import Descriptor, ImageRecord
from ._types import datetime_from_ns
from ._validate import validate_digest, validate_labels

#: The longest image name accepted, in UTF-8 bytes (containerd sets none).
MAX_NAME_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Image:
    """An image as its namespace sees it; times are the store's (those given are ignored)."""

    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def _image(record: ImageRecord) -> Image:
    return Image(
        record.name,
        record.target,
        record.labels,
        datetime_from_ns(record.created_at),
        datetime_from_ns(record.updated_at),
    )


def _adaptor(record: ImageRecord) -> filters.Adaptor:
    target = record.target
    return filters.fields_adaptor(
        {
            "name": record.name,
            "target.digest": target.digest,
            "target.mediatype": target.media_type,
        },
        {"labels": record.labels, "annotations": target.annotations},
    )


def _require_name(name: str) -> str:
    if not name:
        raise InvalidArgument("Image.Name required")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidArgument(f"Image.Name {name[:40]!r}...: longer than {MAX_NAME_BYTES} bytes")
    return name


def _validate(image: Image) -> None:
    """containerd's checks of a stored image, in its order (its words for the target's)."""
    validate_labels(image.labels)
    target = image.target
    try:
        validate_digest(target.digest)
    except InvalidArgument as exc:
        raise InvalidArgument(f"Target.Digest {target.digest!r} invalid: {exc.message}") from None
    if target.size <= 0:
        raise InvalidArgument("Target.Size must be greater than zero")
    if not target.media_type:
        raise InvalidArgument("Target.MediaType must be set")


def _without_empty(values: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if value}


def _stored(image: Image) -> Image:
    """`image` as it is stored: labels and annotations with empty values dropped."""
    target = image.target
    return Image(
        image.name,
        Descriptor(
            target.media_type, target.digest, target.size, _without_empty(target.annotations)
        ),
        _without_empty(image.labels),
    )


def _set_key(values: dict[str, str], given: Mapping[str, str], key: str) -> None:
    """Set `key` from `given`, or remove it when `given` lacks it (containerd's rule)."""
    value = given.get(key, "")
    if value:
        values[key] = value
    else:
        values.pop(key, None)


def merge_update(stored: Image, given: Image, fieldpaths: Sequence[str]) -> Image:
    """`stored` with `given` applied through `fieldpaths`, in order, as containerd applies them.

    No paths replace labels and the whole target. ``labels``/``annotations``
    replace the map, ``labels.<k>``/``annotations.<k>`` set or remove one key,
    ``target`` replaces the target; any other path is InvalidArgument.
    """
    if not fieldpaths:
        return Image(stored.name, given.target, given.labels)
    labels = dict(stored.labels)
    target = stored.target
    annotations = dict(target.annotations)
    for path in fieldpaths:
        if path == "labels":
            labels = dict(given.labels)
        elif path.startswith("labels."):
            _set_key(labels, given.labels, path.removeprefix("labels."))
        elif path == "annotations":
            annotations = dict(given.target.annotations)
        elif path.startswith("annotations."):
            _set_key(annotations, given.target.annotations, path.removeprefix("annotations."))
        elif path == "target":
            target = given.target
            annotations = dict(target.annotations)
        else:
            raise InvalidArgument(f'cannot update "{path}" field on image "{stored.name}"')
    merged = Descriptor(target.media_type, target.digest, target.size, annotations)
    return Image(stored.name, merged, labels)


class StoreImages:
    """The images of one namespace.

    `on_deletion` is told of every change that may free content (an image
    removed, or pointed elsewhere), for a collection scheduler; `collect`
    runs a collection, for deletes with `sync`.
    """

    def __init__(
        self,
        metadata: MetadataBackend,
        namespace: str,
        on_deletion: Callable[[], None],
        collect: Callable[[], object],
    ) -> None:
        self._metadata = metadata
        self._namespace = namespace
        self._on_deletion = on_deletion
        self._collect = collect

    def get(self, name: str) -> Image:
        with self._metadata.read(f"reading image {name}") as tx:
            record = tx.image(self._namespace, name)
        if record is None:
            raise NotFound(f'image "{name}"')
        return _image(record)

    def list(self, *filter_expressions: str) -> list[Image]:
        """The namespace's images matching any of the filters, by name.

        Fields: ``name``, ``target.digest``, ``target.mediatype``,
        ``labels.<k>``, ``annotations.<k>`` (the target's).
        """
        match = filters.parse_all(filter_expressions)
        with self._metadata.read("listing images") as tx:
            records = tx.images(self._namespace)
        return [_image(record) for record in records if match.match(_adaptor(record))]

    def create(self, image: Image) -> Image:
        """Record a new image; AlreadyExists if the name is taken."""
        _require_name(image.name)
        _validate(image)
        stored = _stored(image)
        now = time.time_ns()
        record = ImageRecord(stored.name, dict(stored.labels), stored.target, now, now)
        with self._metadata.write(f"creating image {image.name}") as tx:
            if tx.image(self._namespace, image.name) is not None:
                raise AlreadyExists(f'image "{image.name}"')
            tx.ensure_namespace(self._namespace, now)
            tx.put_image(self._namespace, record)
        return _image(record)

    def update(self, image: Image, fieldpaths: Sequence[str] = ()) -> Image:
        """Change an image through `fieldpaths` (see `merge_update`); NotFound if there is none."""
        _require_name(image.name)
        now = time.time_ns()
        with self._metadata.write(f"updating image {image.name}") as tx:
            found = tx.image(self._namespace, image.name)
            if found is None:
                raise NotFound(f'image "{image.name}"')
            merged = merge_update(_image(found), image, fieldpaths)
            _validate(merged)
            stored = _stored(merged)
            record = ImageRecord(
                stored.name, dict(stored.labels), stored.target, found.created_at, now
            )
            tx.put_image(self._namespace, record)
        if record.target != found.target or record.labels != found.labels:
            self._on_deletion()  # what the image kept may be free now
        return _image(record)

    def delete(self, name: str, *, sync: bool = False) -> None:
        """Remove the image; with `sync`, a collection runs before this returns."""
        with self._metadata.write(f"deleting image {name}") as tx:
            if not tx.delete_image(self._namespace, name):
                raise NotFound(f'image "{name}"')
        self._on_deletion()
        if sync:
            self._collect()
