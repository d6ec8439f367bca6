"""Resumable hashers (`contentd.content._hashstate`): `hashlib`'s digests, with a state to keep.

Whatever the chunking and the kinds of buffer fed in, a hasher's digest is
`hashlib`'s; a state taken after any number of bytes restores a hasher that
goes on to the same digest; and a state that is damaged, foreign, stale or
of another format is refused, never trusted. Where libcrypto cannot be used,
hashers are plain `hashlib` ones with no state.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contentd.content import _hashstate
from contentd.content._hashstate import HashStateError, restore, resumable

ALGORITHMS = ("sha256", "sha512")
algorithms = st.sampled_from(ALGORITHMS)


@pytest.fixture(autouse=True, scope="module")
def _openssl_is_there() -> None:
    for algorithm in ALGORITHMS:
        assert _hashstate.states_available(algorithm), "libcrypto's SHA-2 contexts are missing"


def chunked(data: bytes, cuts: list[int]) -> Iterator[bytes | bytearray | memoryview]:
    """`data` cut at `cuts`, in turn as bytes, bytearray and memoryview (some not of bytes)."""
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    for number, (start, end) in enumerate(itertools.pairwise(bounds)):
        piece = data[start:end]
        kind = number % 4
        if kind == 0:
            yield piece
        elif kind == 1:
            yield bytearray(piece)
        elif kind == 2:
            yield memoryview(data)[start:end]
        elif len(piece) % 4 == 0:
            yield memoryview(piece).cast("I")  # items of 4 bytes: every byte is hashed
        else:
            yield memoryview(bytearray(piece))


@settings(max_examples=300)
@given(algorithms, st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=12))
def test_any_chunking_gives_hashlibs_digest(algorithm: str, data: bytes, cuts: list[int]) -> None:
    hasher = resumable(algorithm)
    for piece in chunked(data, cuts):
        hasher.update(piece)
    assert hasher.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    assert hasher.length == len(data)


@settings(max_examples=60)
@given(algorithms, st.binary(max_size=300))
def test_a_state_taken_at_any_offset_resumes_to_the_same_digest(
    algorithm: str, data: bytes
) -> None:
    whole = hashlib.new(algorithm, data).hexdigest()
    for offset in range(len(data) + 1):
        hasher = resumable(algorithm)
        hasher.update(data[:offset])
        state = hasher.state()
        assert state is not None
        resumed = restore(state, algorithm, offset)
        assert resumed.hexdigest() == hashlib.new(algorithm, data[:offset]).hexdigest()
        resumed.update(data[offset:])
        assert resumed.hexdigest() == whole


@given(algorithms, st.lists(st.binary(max_size=700), max_size=6))
def test_states_chain_through_many_resumes(algorithm: str, pieces: list[bytes]) -> None:
    hasher = resumable(algorithm)
    for piece in pieces:
        state = hasher.state()
        assert state is not None
        hasher = restore(state, algorithm, hasher.length)
        hasher.update(piece)
    assert hasher.hexdigest() == hashlib.new(algorithm, b"".join(pieces)).hexdigest()


def test_a_digest_taken_midway_does_not_disturb_the_hash() -> None:
    hasher = resumable("sha256")
    hasher.update(b"first ")
    assert hasher.hexdigest() == hashlib.sha256(b"first ").hexdigest()
    state = hasher.state()
    hasher.update(b"second")
    assert hasher.hexdigest() == hashlib.sha256(b"first second").hexdigest()
    assert state is not None
    assert restore(state, "sha256", 6).hexdigest() == hashlib.sha256(b"first ").hexdigest()


def test_a_state_is_tagged_with_its_format_and_algorithm() -> None:
    hasher = resumable("sha512")
    hasher.update(b"x" * 200)
    state = hasher.state()
    assert state is not None
    assert state.startswith(b"CDHS\x01\x06sha512")
    # The unfinished block travels with it, the whole blocks only as their chaining words.
    assert len(state) == 4 + 2 + 6 + 8 + 8 * 8 + 200 % 128 + 8


def _valid_state(algorithm: str = "sha256", data: bytes = b"some bytes hashed") -> bytes:
    hasher = resumable(algorithm)
    hasher.update(data)
    state = hasher.state()
    assert state is not None
    return state


def _resealed(body: bytes) -> bytes:
    """`body` with a checksum that fits it: damage the checksum alone would not reveal."""
    return body + hashlib.sha256(body).digest()[:8]


@given(st.data())
def test_a_state_with_any_byte_changed_is_refused(data: st.DataObject) -> None:
    state = bytearray(_valid_state())
    index = data.draw(st.integers(0, len(state) - 1))
    state[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(HashStateError):
        restore(bytes(state), "sha256", len(b"some bytes hashed"))


@given(st.binary(max_size=200))
def test_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(HashStateError):
        restore(garbage, "sha256", 0)


def test_a_truncated_state_is_refused() -> None:
    state = _valid_state()
    for size in range(len(state)):
        with pytest.raises(HashStateError):
            restore(state[:size], "sha256", len(b"some bytes hashed"))


def test_a_state_of_another_algorithm_is_refused() -> None:
    with pytest.raises(HashStateError, match="not sha512"):
        restore(_valid_state("sha256"), "sha512", len(b"some bytes hashed"))
    with pytest.raises(HashStateError):
        restore(_valid_state("sha256"), "md5", len(b"some bytes hashed"))


def test_a_stale_state_is_refused() -> None:
    with pytest.raises(HashStateError, match="after 17 bytes, not 18"):
        restore(_valid_state(), "sha256", 18)


def test_a_state_of_another_format_version_is_refused() -> None:
    body = bytearray(_valid_state()[:-8])
    body[4] = 2
    with pytest.raises(HashStateError, match="version 2"):
        restore(_resealed(bytes(body)), "sha256", len(b"some bytes hashed"))


def test_a_state_whose_unfinished_block_disagrees_with_its_length_is_refused() -> None:
    body = _valid_state()[:-8]
    with pytest.raises(HashStateError, match="inconsistent"):
        restore(_resealed(body + b"x"), "sha256", len(b"some bytes hashed"))
    start = 4 + 2 + len("sha256")
    longer = body[:start] + struct.pack(">Q", 18) + body[start + 8 :]
    with pytest.raises(HashStateError, match="inconsistent"):
        restore(_resealed(longer), "sha256", 18)


def test_a_non_contiguous_buffer_is_refused_as_by_hashlib() -> None:
    view = memoryview(b"abcdef")[::2]
    with pytest.raises(BufferError):
        hashlib.sha256(view)
    with pytest.raises(BufferError):
        resumable("sha256").update(view)


def test_threads_hash_side_by_side() -> None:
    data = [bytes([number]) * (3 << 20) for number in range(4)]
    results: dict[int, str] = {}

    def hash_one(number: int) -> None:
        hasher = resumable("sha256")
        for start in range(0, len(data[number]), 1 << 20):
            hasher.update(memoryview(data[number])[start : start + (1 << 20)])
        results[number] = hasher.hexdigest()

    threads = [threading.Thread(target=hash_one, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: hashlib.sha256(data[n]).hexdigest() for n in range(4)}


def test_without_libcrypto_hashers_are_hashlibs_and_have_no_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = _valid_state()
    monkeypatch.setattr(_hashstate.ctypes.util, "find_library", lambda name: None)
    _hashstate._openssl.cache_clear()
    try:
        assert not _hashstate.states_available("sha256")
        hasher = resumable("sha256")
        hasher.update(b"abc")
        hasher.update(memoryview(b"defg").cast("B"))
        assert hasher.hexdigest() == hashlib.sha256(b"abcdefg").hexdigest()
        assert (hasher.state(), hasher.length) == (None, 7)
        with pytest.raises(HashStateError, match="unavailable"):
            restore(state, "sha256", 17)
    finally:
        _hashstate._openssl.cache_clear()


def test_a_libcrypto_that_fails_the_self_test_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    layouts = dict(_hashstate._LAYOUTS)
    # A context size one word too small: the self-test's guard bytes would be overwritten.
    layouts["sha256"] = _hashstate._Layout("sha256", "SHA256", 108, "I", 64, 32)
    monkeypatch.setattr(_hashstate, "_LAYOUTS", layouts)
    _hashstate._openssl.cache_clear()
    try:
        assert not _hashstate.states_available("sha256")
        assert resumable("sha256").state() is None
    finally:
        _hashstate._openssl.cache_clear()
