"""Listing with filters: what the database narrows must never differ from what a filter matches."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contentd.content import Info, LocalStore, open_store
from contentd.content.filters import info_adaptor, parse_all, required_labels

# Keys a JSON path must quote (dots, slashes), one it cannot (a double quote),
# and values with quotes, backslashes and non-ASCII text.
KEYS = ["a", "a.b", "containerd.io/gc.root", 'q"k', "back\\slash", "tab\tkey", "é", "名前"]
VALUES = ["x", "y", "", '"', "\\", "ü", "x y", "1"]


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStore, list[Info]]]:
    chosen = random.Random(7)
    store = open_store(tmp_path_factory.mktemp("listing"), namespace="listing")
    for number in range(60):
        keys = chosen.sample(KEYS, chosen.randint(0, 4))
        labels = {key: chosen.choice(VALUES) for key in keys}
        with store.writer(f"blob-{number}", labels=labels) as writer:
            writer.write(f"blob {number}".encode())
            writer.commit()
    with store:
        yield store, list(store.walk())


selectors = (
    st.builds(
        lambda key, operator, value: f"labels.{quoted(key)}{operator}{quoted(value)}",
        st.sampled_from(KEYS),
        st.sampled_from(["==", "==", "!="]),
        st.sampled_from(VALUES),
    )
    | st.builds(
        lambda key, pattern: f"labels.{quoted(key)}~={quoted(pattern)}",
        st.sampled_from(KEYS),
        st.sampled_from(["x", "^$", "ü", "^.$"]),
    )
    | st.sampled_from(KEYS).map(lambda key: f"labels.{quoted(key)}")
)
conjunctions = st.lists(selectors, min_size=1, max_size=3).map(",".join)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(expressions=st.lists(conjunctions, min_size=1, max_size=3))
def test_walk_lists_exactly_what_the_filter_matches(
    listed: tuple[LocalStore, list[Info]], expressions: list[str]
) -> None:
    store, everything = listed
    selector = parse_all(expressions)
    expected = [
        info.digest
        for info in everything
        if selector.match(info_adaptor(info.digest, info.size, info.labels))
    ]
    assert [info.digest for info in store.walk(*expressions)] == expected


def test_equalities_narrow_and_anything_else_does_not() -> None:
    assert required_labels(parse_all(["labels.a==x,labels.b==y"])) == [{"a": "x", "b": "y"}]
    assert required_labels(parse_all(["labels.a==x", "labels.b==y"])) == [{"a": "x"}, {"b": "y"}]
    assert required_labels(parse_all(['labels."a.b"==x,size==3'])) == [{"a.b": "x"}]
    # An alternative that needs no label value leaves nothing to narrow.
    assert required_labels(parse_all(["labels.a==x", "labels.b!=y"])) is None
    assert required_labels(parse_all(["labels.a~=x"])) is None
    assert required_labels(parse_all(["digest==sha256:00"])) is None
    assert required_labels(parse_all([])) is None


def test_a_filter_too_long_to_narrow_still_lists_what_it_matches(
    listed: tuple[LocalStore, list[Info]], tmp_path: Path
) -> None:
    store, everything = listed
    # Hundreds of alternatives: past what the database is asked to narrow.
    expressions = [f"labels.a=={quoted(str(number))}" for number in range(1000, 1500)]
    expressions.append("labels.a==x")
    expected = [info.digest for info in everything if info.labels.get("a") == "x"]
    assert expected
    assert [info.digest for info in store.walk(*expressions)] == expected
