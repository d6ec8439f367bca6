"""LocalStore: the store's rules on a directory, usable by any number of processes at once.

The rules (`_rules`) wired to a root's files (`_files`), its SQLite database
(`_sqlite`) and flock locks (`_locks`)::

    <root>/metadata.db          namespaces, content, ingests, registry records
    <root>/blobs/ ingest/ trash/ quarantine/    see `_files`
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import overload

from contentd.errdefs import InvalidArgument

from ._cluster import ClusterStore
from ._files import FileBlobs
from ._fs import translate_os_errors
from ._locks import FileLocks
from ._rules import DEFAULT_NAMESPACE, BackedStore, Backends
from ._sqlite import BUSY_TIMEOUT, Metadata
from ._verify import VerifyReport, repair_quarantine, verify_root


def default_root() -> Path:
    """The embedded default store root: $XDG_DATA_HOME/contentd or ~/.local/share/contentd."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(data_home) / "contentd"


@overload
def open_store(
    root: str | os.PathLike[str],
    namespace: str = DEFAULT_NAMESPACE,
    *,
    busy_timeout: float = BUSY_TIMEOUT,
) -> LocalStore: ...


@overload
def open_store(
    root: None = None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    blobs: str,
    metadata: str,
    busy_timeout: float = BUSY_TIMEOUT,
) -> ClusterStore: ...


def open_store(
    root: str | os.PathLike[str] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    blobs: str | None = None,
    metadata: str | None = None,
    busy_timeout: float = BUSY_TIMEOUT,
) -> LocalStore | ClusterStore:
    """Open a store as `namespace` sees it: a directory, or a cluster's object storage and database.

    `root` names a store directory (created if missing). Instead, `blobs`
    (an ``s3://BUCKET[/PREFIX]`` URL) and `metadata` (a ``postgresql://`` URL)
    name a store that any number of processes on any number of hosts share
    (`ClusterStore`). `busy_timeout` bounds, in seconds, how long a change
    waits for another process's metadata transaction before it fails with
    Unavailable (reason STORE_BUSY).
    """
    if blobs is not None or metadata is not None:
        if root is not None:
            raise InvalidArgument("open a store directory or a cluster store, not both")
        if blobs is None or metadata is None:
            raise InvalidArgument("a cluster store needs both blobs and metadata URLs")
        return ClusterStore(blobs, metadata, namespace, busy_timeout=busy_timeout)
    if root is None:
        raise InvalidArgument("open_store needs a store directory, or blobs and metadata URLs")
    return LocalStore(root, namespace, busy_timeout=busy_timeout)


class LocalStore(BackedStore):
    """The content store in a directory, as one namespace sees it.

    Any number of LocalStores, in any number of processes, may work on one
    root at once: ingest locks are file locks and metadata lives in SQLite.
    Opening repairs what a crashed process left half done, and takes in
    what an earlier version kept elsewhere (the registry's registry.db).
    `with_namespace` gives views that share this one's files and
    connections; closing any of them closes them all.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        namespace: str = DEFAULT_NAMESPACE,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        path = Path(root)
        with translate_os_errors("creating the store"):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            # SQLite would create it world-readable; its journals copy the database's mode.
            os.close(os.open(path / "metadata.db", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        files = FileBlobs(path)
        metadata = Metadata(path / "metadata.db", busy_timeout=busy_timeout)
        super().__init__(Backends(files, metadata, FileLocks(files.ingest_directory)), namespace)
        self._files = files
        self._sqlite = metadata
        self.repair()

    @property
    def path(self) -> Path:
        """The store's root directory."""
        return self._files.root

    def repair(self) -> None:
        super().repair()
        repair_quarantine(self._files, self._sqlite)

    def verify(self, *, quarantine: bool = False) -> VerifyReport:
        """Hash every blob of the store (every namespace's) and report those that fail.

        With `quarantine`, each corrupt, unreadable or missing blob is moved
        to ROOT/quarantine/ with a note of who referenced it, and its records
        are dropped in every namespace, so that it can be stored again. Safe
        while other processes, a daemon included, use the store.
        """
        return verify_root(self._files, self._sqlite, quarantine=quarantine)
