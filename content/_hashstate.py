"""Hashes whose state can be saved and restored: a writer resumes without re-reading its bytes.

Python's `hashlib` cannot export a hash's state, so an ingest resumed by
another process would have to read back every byte it holds to rebuild its
digest (on object storage, download it). OpenSSL's low-level SHA-256 and
SHA-512 functions work on public, fixed-layout contexts (``SHA256_CTX``,
``SHA512_CTX``), and libcrypto 3 still exports them: called through ctypes,
on the libcrypto Python's own `hashlib` uses, they hash at `hashlib`'s speed
and release the GIL while they run, and their context is plain bytes.

`resumable(algorithm)` gives a hasher; its `state()` is a portable encoding
of the context (not the raw struct, whose words are in the host's byte
order), tagged with a format version and the algorithm, and checksummed.
`restore(state, algorithm, length)` rebuilds a hasher from it, and refuses
(`HashStateError`) anything it did not write for exactly that algorithm and
length: the caller then rebuilds the hash from the bytes, as before.

Where libcrypto or those functions are missing, or do not behave as this
module expects (checked once, on first use, against `hashlib`), hashers are
plain `hashlib` ones whose `state()` is None. State format, version 1::

    b"CDHS" | version (1 byte) | len(name) (1 byte) | name (ASCII)
    | length hashed (8 bytes, big-endian) | the 8 chaining words (big-endian)
    | the bytes of the unfinished block (length modulo the block size)
    | the first 8 bytes of SHA-256 of everything before
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, runtime_checkable

_log = logging.getLogger("contentd.store")

_MAGIC: Final = b"CDHS"
#: The version of the state format this module writes and reads.
STATE_VERSION: Final = 1
_CHECK_BYTES: Final = 8
_MAX_LENGTH: Final = (1 << 64) - 1


class HashStateError(ValueError):
    """A hash state that cannot be restored: malformed, foreign, stale, or unsupported here."""


@runtime_checkable
class Hasher(Protocol):
    """A running hash, fed with `update`, with a state to save (`hashlib`'s have none)."""

    @property
    def name(self) -> str:
        """The algorithm, as digests name it ("sha256")."""
        ...

    @property
    def length(self) -> int:
        """How many bytes were hashed."""
        ...

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str:
        """The digest of the bytes so far; the hash goes on as it was."""
        ...

    def state(self) -> bytes | None:
        """The hash's state, for `restore`; None where states are unavailable."""
        ...


@dataclass(frozen=True)
class _Layout:
    """Where an OpenSSL SHA-2 context keeps what the state format carries."""

    name: str
    prefix: str  # of the C functions: SHA256_Init, ...
    ctx_size: int
    word: str  # struct code of a chaining word and of the bit counts
    block: int
    digest_size: int

    @property
    def word_size(self) -> int:
        return struct.calcsize(self.word)

    @property
    def data_offset(self) -> int:
        return 10 * self.word_size  # h[8], Nl, Nh

    @property
    def num_offset(self) -> int:
        return self.data_offset + self.block  # data, then num and md_len


_LAYOUTS: Final = {
    "sha256": _Layout("sha256", "SHA256", 112, "I", 64, 32),
    "sha512": _Layout("sha512", "SHA512", 216, "Q", 128, 64),
}


class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (part of the stable ABI since 3.11)."""

    _fields_ = (
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_void_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    )


class _Functions:
    """One algorithm's Init, Update and Final from libcrypto, and CPython's buffer calls."""

    def __init__(self, library: ctypes.CDLL, layout: _Layout) -> None:
        self.layout = layout
        self.get_buffer, self.release_buffer = _buffer_calls()
        self.init = getattr(library, f"{layout.prefix}_Init")
        self.update = getattr(library, f"{layout.prefix}_Update")
        self.final = getattr(library, f"{layout.prefix}_Final")
        self.init.argtypes = [ctypes.c_void_p]
        self.update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.final.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        for function in (self.init, self.update, self.final):
            function.restype = ctypes.c_int


def _buffer_calls() -> tuple[Callable[..., int], Callable[..., None]]:
    """PyObject_GetBuffer and PyBuffer_Release (AttributeError where there is no pythonapi)."""
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get.restype = ctypes.c_int
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    return get, release


class _OpenSSLHasher:
    """A SHA-2 hash whose context is a buffer this object owns (see the module's doc)."""

    def __init__(
        self, functions: _Functions, ctx: ctypes.Array[ctypes.c_char] | None = None
    ) -> None:
        self._functions = functions
        if ctx is None:
            ctx = ctypes.create_string_buffer(functions.layout.ctx_size)
            if functions.init(ctx) != 1:
                raise MemoryError("OpenSSL could not start a hash")
        self._ctx = ctx
        # Updates run without the GIL: one at a time on a context.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._functions.layout.name

    @property
    def length(self) -> int:
        return _decode_context(self._functions.layout, self._context())[1]

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        update = self._functions.update
        if type(data) is bytes:
            # ctypes passes a pointer to the bytes themselves.
            with self._lock:
                ok = update(self._ctx, data, len(data))
        else:
            # Any other buffer is pinned (a bytearray cannot resize) and read in place.
            view = _PyBuffer()
            self._functions.get_buffer(data, ctypes.byref(view), 0)
            try:
                with self._lock:
                    ok = update(self._ctx, view.buf, view.len)
            finally:
                self._functions.release_buffer(ctypes.byref(view))
        if ok != 1:
            raise MemoryError("OpenSSL could not hash")

    def _context(self) -> bytes:
        with self._lock:
            return self._ctx.raw

    def hexdigest(self) -> str:
        # Final on a copy: the hash itself goes on.
        ctx = ctypes.create_string_buffer(self._context(), self._functions.layout.ctx_size)
        out = ctypes.create_string_buffer(self._functions.layout.digest_size)
        if self._functions.final(out, ctx) != 1:
            raise MemoryError("OpenSSL could not finish a hash")
        return out.raw.hex()

    def state(self) -> bytes:
        layout = self._functions.layout
        words, length, pending = _decode_context(layout, self._context())
        return _encode_state(layout, words, length, pending)


class _PlainHasher:
    """A `hashlib` hash, for where OpenSSL's contexts cannot be had: it has no state."""

    def __init__(self, algorithm: str) -> None:
        self._hash = hashlib.new(algorithm)
        self._length = 0

    @property
    def name(self) -> str:
        return self._hash.name

    @property
    def length(self) -> int:
        return self._length

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._hash.update(data)
        self._length += memoryview(data).nbytes

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def state(self) -> None:
        return None


# The context, decoded and encoded


def _decode_context(layout: _Layout, raw: bytes) -> tuple[tuple[int, ...], int, bytes]:
    """A native context's chaining words, length hashed (bytes) and unfinished block."""
    word = layout.word
    words = struct.unpack_from(f"=8{word}", raw, 0)
    low, high = struct.unpack_from(f"=2{word}", raw, 8 * layout.word_size)
    num, md_len = struct.unpack_from("=2I", raw, layout.num_offset)
    bits = (high << (8 * layout.word_size)) | low
    if bits % 8 or num != (bits // 8) % layout.block or md_len != layout.digest_size:
        raise HashStateError(f"{layout.name} context is not as expected")
    return words, bits // 8, raw[layout.data_offset : layout.data_offset + num]


def _encode_context(
    layout: _Layout, words: tuple[int, ...], length: int, pending: bytes
) -> ctypes.Array[ctypes.c_char]:
    word = layout.word
    bits = length * 8
    mask = (1 << (8 * layout.word_size)) - 1
    raw = (
        struct.pack(f"=8{word}", *words)
        + struct.pack(f"=2{word}", bits & mask, bits >> (8 * layout.word_size))
        + pending.ljust(layout.block, b"\0")
        + struct.pack("=2I", len(pending), layout.digest_size)
    )
    return ctypes.create_string_buffer(raw, layout.ctx_size)


def _check(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()[:_CHECK_BYTES]


def _encode_state(layout: _Layout, words: tuple[int, ...], length: int, pending: bytes) -> bytes:
    name = layout.name.encode("ascii")
    body = (
        _MAGIC
        + bytes((STATE_VERSION, len(name)))
        + name
        + struct.pack(f">Q8{layout.word}", length, *words)
        + pending
    )
    return body + _check(body)


def _decode_state(state: bytes, algorithm: str) -> tuple[_Layout, tuple[int, ...], int, bytes]:
    layout = _LAYOUTS.get(algorithm)
    if layout is None:
        raise HashStateError(f"no hash states for {algorithm}")
    if len(state) < len(_MAGIC) + 2 + _CHECK_BYTES or not state.startswith(_MAGIC):
        raise HashStateError("not a hash state")
    body, check = state[:-_CHECK_BYTES], state[-_CHECK_BYTES:]
    if _check(body) != check:
        raise HashStateError("hash state damaged (checksum)")
    version, name_size = body[len(_MAGIC)], body[len(_MAGIC) + 1]
    if version != STATE_VERSION:
        raise HashStateError(f"hash state of format version {version}, not {STATE_VERSION}")
    start = len(_MAGIC) + 2
    name = body[start : start + name_size]
    if name != algorithm.encode("ascii"):
        raise HashStateError(f"hash state of {name[:16]!r}, not {algorithm}")
    numbers = struct.Struct(f">Q8{layout.word}")
    start += name_size
    if len(body) < start + numbers.size:
        raise HashStateError("hash state truncated")
    length, *words = numbers.unpack_from(body, start)
    pending = body[start + numbers.size :]
    if len(pending) != length % layout.block:
        raise HashStateError("hash state inconsistent (unfinished block)")
    return layout, tuple(words), length, pending


# Choosing the implementation, once


@functools.cache
def _openssl(algorithm: str) -> _Functions | None:
    """libcrypto's functions for `algorithm`, if they work as this module expects."""
    layout = _LAYOUTS.get(algorithm)
    name = ctypes.util.find_library("crypto")
    if layout is None or name is None:
        return None
    try:
        functions = _Functions(ctypes.CDLL(name), layout)
        _self_test(functions)
    except (OSError, AttributeError, HashStateError, MemoryError) as exc:
        _log.info("hash states for %s unavailable (%s): resumes re-read ingests", algorithm, exc)
        return None
    return functions


def _self_test(functions: _Functions) -> None:
    """Check libcrypto against `hashlib`, and the context's layout against `_Layout`.

    HashStateError if anything differs: this libcrypto's contexts are not used.
    """
    layout = functions.layout
    sentinel = b"\xa5" * 64
    data = bytes(range(256)) * 4
    for size in (0, 1, layout.block - 1, layout.block, 3 * layout.block + 5, 1000):
        piece = data[:size]
        # Room past the context, to see that libcrypto's is no larger than ours.
        ctx = ctypes.create_string_buffer(b"\0" * layout.ctx_size + sentinel)
        if functions.init(ctx) != 1 or functions.update(ctx, piece, size) != 1:
            raise HashStateError("self-test: libcrypto failed")
        raw = ctx.raw
        if raw[layout.ctx_size : layout.ctx_size + len(sentinel)] != sentinel:
            raise HashStateError("self-test: a larger context than expected")
        words, length, pending = _decode_context(layout, raw)
        if (length, pending) != (size, piece[size - size % layout.block :]):
            raise HashStateError("self-test: another context layout")
        hasher = _OpenSSLHasher(functions, _encode_context(layout, words, length, pending))
        if hasher.hexdigest() != hashlib.new(layout.name, piece).hexdigest():
            raise HashStateError("self-test: another digest than hashlib's")
        hasher.update(piece)
        if hasher.hexdigest() != hashlib.new(layout.name, piece + piece).hexdigest():
            raise HashStateError("self-test: a restored context hashes differently")


def states_available(algorithm: str) -> bool:
    """Whether hashers of `algorithm` here have a state to save."""
    return _openssl(algorithm) is not None


def resumable(algorithm: str) -> Hasher:
    """A new hasher for `algorithm` ("sha256" or "sha512"), with a state where it can have one."""
    functions = _openssl(algorithm)
    if functions is None:
        return _PlainHasher(algorithm)
    return _OpenSSLHasher(functions)


def restore(state: bytes, algorithm: str, length: int) -> Hasher:
    """The hasher `state` was saved from, if it is `algorithm`'s after exactly `length` bytes.

    HashStateError for anything else: a state damaged, of another format
    version or algorithm, of another length (stale), or where states are
    unavailable; the caller then rebuilds the hash from the bytes.
    """
    layout, words, hashed, pending = _decode_state(bytes(state), algorithm)
    if hashed != length:
        raise HashStateError(f"hash state after {hashed} bytes, not {length}")
    if not 0 <= hashed <= _MAX_LENGTH // 8:
        raise HashStateError("hash state of an impossible length")
    functions = _openssl(algorithm)
    if functions is None:
        raise HashStateError(f"hash states for {algorithm} are unavailable here")
    return _OpenSSLHasher(functions, _encode_context(layout, words, hashed, pending))
