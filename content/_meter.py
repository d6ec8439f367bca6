"""What a store tells whoever counts its work (the daemon's metrics), at no cost otherwise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


class StoreMeter:
    """Hooks a store calls as it works; each is None until a reporter sets it.

    An unwatched store pays one test of an attribute per event. A hook runs on
    the thread doing the work, so it must be quick and must not raise.
    """

    __slots__ = ("batch_committed", "lock_refused")

    def __init__(self) -> None:
        #: Called with how many changes one group commit carried in one transaction.
        self.batch_committed: Callable[[int], None] | None = None
        #: Called when a writer is refused because another holds its ref (REF_LOCKED).
        self.lock_refused: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class NamespaceUsage:
    """What one namespace holds: committed blobs and their bytes, and ingests in progress.

    Bytes are the blobs' sizes as the namespace records them: a blob two
    namespaces hold counts in each, though its bytes are stored once.
    """

    namespace: str
    blobs: int
    bytes: int
    ingests: int


#: Each namespace's blobs, their bytes and its ingests: one pass over each table.
USAGE_QUERY = (
    "SELECT n.name, COALESCE(c.blobs, 0), COALESCE(c.bytes, 0), COALESCE(i.ingests, 0)"
    " FROM namespaces n"
    " LEFT JOIN (SELECT namespace, COUNT(*) AS blobs, SUM(size) AS bytes"
    " FROM content GROUP BY namespace) c ON c.namespace = n.name"
    " LEFT JOIN (SELECT namespace, COUNT(*) AS ingests"
    " FROM ingests GROUP BY namespace) i ON i.namespace = n.name"
    " ORDER BY n.name"
)
