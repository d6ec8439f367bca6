"""LocalStore against a model: random sequences of writes, commits, aborts and resumes.

The model is two dictionaries: ingests (ref -> bytes written) and blobs
(digest -> bytes), per namespace. After every step the store must agree with
it: every ingest's offset, every blob's bytes and labels, the listings.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from contentd import errdefs
from contentd.content import BackedWriter, LocalStore, digest_of, open_store

NAMESPACES = ("alpha", "beta")
REFS = ("r1", "r2", "r3")
chunks = st.binary(min_size=1, max_size=300) | st.sampled_from([b"same bytes", b"x" * 700])
labels = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]), max_size=2)


class StoreModel(RuleBasedStateMachine):
    writers = Bundle("writers")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.store = open_store(self.tmp / "root")
        self.ingests: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[str, dict[str, tuple[bytes, dict[str, str]]]] = {
            ns: {} for ns in NAMESPACES
        }
        self.open: dict[tuple[str, str], BackedWriter] = {}

    def teardown(self) -> None:
        for writer in self.open.values():
            writer.close()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def view(self, namespace: str) -> LocalStore:
        return self.store.with_namespace(namespace)

    @rule(target=writers, namespace=st.sampled_from(NAMESPACES), ref=st.sampled_from(REFS))
    def open_writer(self, namespace: str, ref: str) -> tuple[str, str]:
        key = (namespace, ref)
        if key in self.open:
            with pytest.raises(errdefs.Unavailable) as refused:
                self.view(namespace).writer(ref)
            assert refused.value.reason == errdefs.REF_LOCKED
            return key
        writer = self.view(namespace).writer(ref)
        self.open[key] = writer
        self.ingests.setdefault(key, b"")
        assert writer.status().offset == len(self.ingests[key])
        assert writer.digest() == digest_of(self.ingests[key])
        return key

    @rule(key=writers, data=chunks)
    def write(self, key: tuple[str, str], data: bytes) -> None:
        writer = self.open.get(key)
        if writer is None:
            return
        writer.write(data)
        self.ingests[key] += data

    @rule(key=writers)
    def truncate(self, key: tuple[str, str]) -> None:
        writer = self.open.get(key)
        if writer is None:
            return
        writer.truncate(0)
        self.ingests[key] = b""

    @rule(key=writers)
    def close(self, key: tuple[str, str]) -> None:
        writer = self.open.pop(key, None)
        if writer is not None:
            writer.close()

    @rule(key=writers, how=st.sampled_from(["plain", "sized", "digested", "wrong"]), tags=labels)
    def commit(self, key: tuple[str, str], how: str, tags: dict[str, str]) -> None:
        writer = self.open.pop(key, None)
        if writer is None:
            return
        namespace, _ = key
        data = self.ingests[key]
        digest = digest_of(data)
        size, expected = {
            "plain": (0, ""),
            "sized": (len(data), ""),
            "digested": (len(data), digest),
            "wrong": (len(data) + 1, ""),
        }[how]
        try:
            assert writer.commit(size, expected, tags) == digest
        except errdefs.FailedPrecondition:
            assert how == "wrong"
            return  # the ingest stays, as it was
        except errdefs.AlreadyExists:
            assert digest in self.blobs[namespace]
            del self.ingests[key]
            return
        assert how != "wrong"
        del self.ingests[key]
        self.blobs[namespace][digest] = (data, tags)

    @precondition(lambda self: any(key not in self.open for key in self.ingests))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k in self.ingests if k not in self.open)))
        self.view(key[0]).abort(key[1])
        del self.ingests[key]

    @rule(namespace=st.sampled_from(NAMESPACES), data=st.data())
    def delete(self, namespace: str, data: st.DataObject) -> None:
        stored = sorted(self.blobs[namespace])
        if not stored:
            return
        digest = data.draw(st.sampled_from(stored))
        self.view(namespace).delete(digest)
        del self.blobs[namespace][digest]

    @rule(namespace=st.sampled_from(NAMESPACES), data=st.data(), tags=labels)
    def relabel(self, namespace: str, data: st.DataObject, tags: dict[str, str]) -> None:
        stored = sorted(self.blobs[namespace])
        if not stored:
            return
        digest = data.draw(st.sampled_from(stored))
        self.view(namespace).update(digest, tags)
        self.blobs[namespace][digest] = (self.blobs[namespace][digest][0], tags)

    @rule()
    def reopen(self) -> None:
        """Another process's view: a second LocalStore on the same root sees the same things."""
        with open_store(self.tmp / "root") as other:
            for (namespace, ref), data in self.ingests.items():
                assert other.with_namespace(namespace).status(ref).offset == len(data)

    @invariant()
    def ingests_match(self) -> None:
        for namespace in NAMESPACES:
            statuses = {s.ref: s.offset for s in self.view(namespace).list_statuses()}
            expected = {
                ref: len(data) for (ns, ref), data in self.ingests.items() if ns == namespace
            }
            assert statuses == expected

    @invariant()
    def blobs_match(self) -> None:
        for namespace in NAMESPACES:
            view = self.view(namespace)
            assert {info.digest for info in view.walk()} == set(self.blobs[namespace])
            for digest, (data, tags) in self.blobs[namespace].items():
                info = view.info(digest)
                assert (info.size, dict(info.labels)) == (len(data), tags)
                with view.reader_at(digest) as reader:
                    assert reader.read() == data


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
