"""HTTP basic auth against an htpasswd file of bcrypt hashes, as docker distribution reads it.

Only bcrypt entries (``htpasswd -B``: ``$2y$``, ``$2a$``, ``$2b$``) are
accepted, as in docker distribution: the file's other schemes (MD5-crypt,
SHA-1, plain) are too weak to offer. bcrypt is slow on purpose, so a
credential once verified is remembered (by a hash of it, never in the clear)
until the file changes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from pathlib import Path

import bcrypt

from contentd.errdefs import InvalidArgument

_BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")
#: Credentials remembered at most; past it the memory starts over.
_REMEMBERED = 1024


def _load(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"htpasswd file {path}: cannot be read ({exc})") from None
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise InvalidArgument(f"htpasswd file {path}, line {number}: expected user:hash")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            raise InvalidArgument(
                f"htpasswd file {path}, line {number}: "
                "only bcrypt hashes (htpasswd -B) are supported"
            )
        # The Python bcrypt library knows $2y$ as $2b$: the same algorithm.
        users[user] = b"$2b$" + hashed[4:].encode("ascii")
    return users


class Htpasswd:
    """The users of an htpasswd file; reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp = self._current_stamp()
        self._users = _load(path)
        self._verified: set[bytes] = set()

    def _current_stamp(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._path)
        except OSError:
            return (0, 0, 0)
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        try:
            users = _load(self._path)
        except InvalidArgument:
            return  # a file caught mid-rewrite: keep the users we had
        with self._lock:
            self._stamp, self._users, self._verified = stamp, users, set()

    def check(self, authorization: str | None) -> str | None:
        """The user an ``Authorization: Basic`` header proves, or None."""
        if not authorization:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        self._refresh()
        hashed = self._users.get(user)
        if hashed is None:
            return None
        remembered = hashlib.sha256(hashed + b"\0" + decoded.encode()).digest()
        with self._lock:
            if remembered in self._verified:
                return user
        if not bcrypt.checkpw(password.encode("utf-8"), hashed):
            return None
        with self._lock:
            if len(self._verified) >= _REMEMBERED:
                self._verified.clear()
            self._verified.add(remembered)
        return user
