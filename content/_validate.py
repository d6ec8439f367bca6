"""Checks on everything a caller hands the store: digests, refs, namespaces, labels."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from contentd.errdefs import InvalidArgument

#: Digest algorithms the store accepts, with their hash constructors and hex lengths.
ALGORITHMS: Final[dict[str, tuple[Callable[[], hashlib._Hash], int]]] = {
    "sha256": (hashlib.sha256, 64),
    "sha512": (hashlib.sha512, 128),
}
CANONICAL_ALGORITHM: Final = "sha256"

#: The longest ref accepted, in UTF-8 bytes. Refs are keys, never paths.
MAX_REF_BYTES: Final = 1024
#: A label's key and value together, in UTF-8 bytes (containerd's limit).
MAX_LABEL_BYTES: Final = 4096
#: The most labels one blob may carry. containerd sets no bound; real blobs carry
#: a handful (containerd's own GC labels run to dozens on an image index).
MAX_LABELS: Final = 256
#: All of a blob's label keys and values together, in UTF-8 bytes.
MAX_LABELS_BYTES: Final = 64 * 1024
#: The most field paths one Update may name: enough to touch every label a
#: blob may have and set as many new ones.
MAX_UPDATE_PATHS: Final = 2 * MAX_LABELS

_NAMESPACE = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_MAX_NAMESPACE: Final = 76
_HEX = re.compile(r"[0-9a-f]+")


def _shown(value: str, limit: int = 80) -> str:
    """A value quoted for an error message, shortened so hostile input stays readable."""
    if len(value) > limit:
        value = value[:limit] + "..."
    return repr(value)


def validate_digest(digest: str) -> str:
    """Return `digest` if it is ``<algorithm>:<lowercase hex of the right length>``."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep:
        raise InvalidArgument(f"digest {_shown(digest)}: expected <algorithm>:<hex>")
    spec = ALGORITHMS.get(algorithm)
    if spec is None:
        raise InvalidArgument(f"digest {_shown(digest)}: unsupported algorithm")
    if len(encoded) != spec[1] or not _HEX.fullmatch(encoded):
        raise InvalidArgument(
            f"digest {_shown(digest)}: expected {spec[1]} lowercase hex characters"
        )
    return digest


def split_digest(digest: str) -> tuple[str, str]:
    """The algorithm and hex of a valid digest."""
    algorithm, _, encoded = validate_digest(digest).partition(":")
    return algorithm, encoded


def new_hasher(algorithm: str = CANONICAL_ALGORITHM) -> hashlib._Hash:
    """A fresh hash object for a supported algorithm."""
    return ALGORITHMS[algorithm][0]()


def digest_of(data: bytes, algorithm: str = CANONICAL_ALGORITHM) -> str:
    """The digest of `data`."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm}:{hasher.hexdigest()}"


def validate_ref(ref: str) -> str:
    """Return `ref` if it is a usable ingest ref: non-empty and not too long."""
    if not ref:
        raise InvalidArgument("ref must not be empty")
    if len(ref.encode("utf-8", "surrogatepass")) > MAX_REF_BYTES:
        raise InvalidArgument(f"ref {_shown(ref)}: longer than {MAX_REF_BYTES} bytes")
    return ref


def validate_namespace(namespace: str) -> str:
    """Return `namespace` if it is a valid containerd identifier."""
    if not namespace:
        raise InvalidArgument("namespace must not be empty")
    if len(namespace) > _MAX_NAMESPACE:
        raise InvalidArgument(
            f"namespace {_shown(namespace)}: longer than {_MAX_NAMESPACE} characters"
        )
    if not _NAMESPACE.fullmatch(namespace):
        raise InvalidArgument(
            f"namespace {_shown(namespace)}: must be letters and digits, "
            "separated by single '.', '_' or '-'"
        )
    return namespace


def validate_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A copy of `labels` if they fit the limits a blob's labels must keep.

    Each key and value together fit containerd's `MAX_LABEL_BYTES`; there are
    at most `MAX_LABELS` labels of at most `MAX_LABELS_BYTES` together. Labels
    with an empty value, which mean "no such label", count for neither.
    """
    count = 0
    total = 0
    for key, value in labels.items():
        size = len(key.encode("utf-8", "surrogatepass")) + len(
            value.encode("utf-8", "surrogatepass")
        )
        if size > MAX_LABEL_BYTES:
            raise InvalidArgument(
                f"label {_shown(key, 20)}: key and value longer than {MAX_LABEL_BYTES} bytes"
            )
        if value:
            count += 1
            total += size
    if count > MAX_LABELS:
        raise InvalidArgument(f"{count} labels: more than {MAX_LABELS} on one blob")
    if total > MAX_LABELS_BYTES:
        raise InvalidArgument(
            f"labels of {total} bytes together: more than {MAX_LABELS_BYTES} on one blob"
        )
    return dict(labels)


def validate_update_paths(paths: Sequence[str]) -> Sequence[str]:
    """Return `paths` if an Update may name that many (`MAX_UPDATE_PATHS`)."""
    if len(paths) > MAX_UPDATE_PATHS:
        raise InvalidArgument(f"update of {len(paths)} field paths: more than {MAX_UPDATE_PATHS}")
    return paths


def validate_size(name: str, value: int) -> int:
    """Return `value` if it is a non-negative size or offset."""
    if value < 0:
        raise InvalidArgument(f"{name} {value}: must not be negative")
    return value
