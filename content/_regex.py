"""Regular expressions searched in time linear in the text, for filters.

Python's `re` backtracks: a pattern such as ``(a+)+$`` takes exponential time on
``aaaa...!``, and `re` holds the GIL while it runs, so one filter could freeze
every thread of a daemon. Filters come from callers, so their patterns are
searched here instead, the way RE2 (containerd's engine) does: `re`'s own parser
reads the pattern, which becomes a Thompson NFA, which is run as a DFA built
lazily, one cached state per set of NFA states. Each character of a text then
costs one dictionary lookup once its transition is cached, and at most one pass
over the NFA when it is not.

Filters only ask whether a pattern occurs in a text, never where, so greedy and
lazy repeats are the same here. The syntax is `re`'s, in ASCII mode, without what
a finite automaton cannot do (and RE2 does not have either): backreferences,
lookaround, conditionals, atomic groups and possessive repeats are refused.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Final

# re's own parser, so patterns mean exactly what they mean to re. It is private
# (and untyped) but has kept its shape since Python 3.11.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

#: The most NFA states a pattern may compile to. A state costs one step per
#: character at worst; ``.{1,1000}`` needs about a thousand.
MAX_STATES: Final = 2000
#: What a pattern's DFA cache may hold (NFA states in its DFA states, plus its
#: transitions) before it starts over: a few megabytes at most.
_MAX_CACHED: Final = 100_000

_UNSUPPORTED: Final = {
    "GROUPREF": "backreferences",
    "GROUPREF_EXISTS": "conditional groups",
    "ASSERT": "lookahead and lookbehind",
    "ASSERT_NOT": "lookahead and lookbehind",
    "ATOMIC_GROUP": "atomic groups",
    "POSSESSIVE_REPEAT": "possessive repeats",
}
_WORD: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_DIGIT: Final = frozenset("0123456789")
# What \s matches in ASCII mode (C's isspace), which is less than str.isspace.
_SPACE: Final = frozenset(" \t\n\r\x0b\x0c")
_CATEGORIES: Final = {
    "CATEGORY_DIGIT": (_DIGIT, False),
    "CATEGORY_NOT_DIGIT": (_DIGIT, True),
    "CATEGORY_SPACE": (_SPACE, False),
    "CATEGORY_NOT_SPACE": (_SPACE, True),
    "CATEGORY_WORD": (_WORD, False),
    "CATEGORY_NOT_WORD": (_WORD, True),
}
# re's ^ and $ under (?m).
_MULTILINE_ANCHORS: Final = {"AT_BEGINNING": "AT_BEGINNING_LINE", "AT_END": "AT_END_LINE"}

# What precedes a position, as far as anchors and \b care.
_AT_START: Final = 0
_AFTER_NEWLINE: Final = 1
_AFTER_WORD: Final = 2
_AFTER_OTHER: Final = 3

# NFA state kinds.
_CHAR: Final = 0  # consumes one character its test accepts
_SPLIT: Final = 1  # moves to any of its targets without consuming
_ASSERT: Final = 2  # moves on without consuming if its anchor holds here
_MATCH: Final = 3

_CharTest = Callable[[str], bool]


class RegexError(ValueError):
    """A pattern this engine refuses: unsupported syntax, or too large an automaton."""


def _never(char: str) -> bool:
    return False


def _fold(char: str) -> str:
    """ASCII case folding, as re's IGNORECASE does in ASCII mode."""
    return char.lower() if char.isascii() else char


class _Nfa:
    """Thompson's construction over re's parse tree, built back to front."""

    def __init__(self) -> None:
        self.kinds: list[int] = []
        self.tests: list[_CharTest] = []
        self.anchors: list[str] = []
        self.targets: list[list[int]] = []

    def add(self, kind: int, targets: list[int], test: _CharTest = _never, anchor: str = "") -> int:
        if len(self.kinds) >= MAX_STATES:
            raise RegexError(f"too complex (more than {MAX_STATES} automaton states)")
        self.kinds.append(kind)
        self.tests.append(test)
        self.anchors.append(anchor)
        self.targets.append(targets)
        return len(self.kinds) - 1

    def sequence(self, items: Sequence[tuple[Any, Any]], flags: int, then: int) -> int:
        """The start of `items`, each followed by the next, the last by `then`."""
        for op, argument in reversed(items):
            then = self.item(op.name, argument, flags, then)
        return then

    def item(self, name: str, argument: Any, flags: int, then: int) -> int:
        if name in _UNSUPPORTED:
            raise RegexError(f"{_UNSUPPORTED[name]} are not supported (nor are they in RE2)")
        if name in ("LITERAL", "NOT_LITERAL", "ANY", "IN"):
            return self.add(_CHAR, [then], _char_test(name, argument, flags))
        if name == "AT":
            anchor = argument.name
            if flags & re.MULTILINE:
                anchor = _MULTILINE_ANCHORS.get(anchor, anchor)
            return self.add(_ASSERT, [then], anchor=anchor)
        if name == "BRANCH":
            return self.add(_SPLIT, [self.sequence(branch, flags, then) for branch in argument[1]])
        if name == "SUBPATTERN":
            _group, add_flags, del_flags, body = argument
            return self.sequence(body, (flags | add_flags) & ~del_flags, then)
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, body = argument
            if high == _constants.MAXREPEAT:
                loop = self.add(_SPLIT, [])
                self.targets[loop] += [self.sequence(body, flags, loop), then]
                start = loop
            else:
                start = then
                for _ in range(high - low):
                    start = self.add(_SPLIT, [self.sequence(body, flags, start), then])
            for _ in range(low):
                start = self.sequence(body, flags, start)
            return start
        raise RegexError(f"{name} is not supported")


def _char_test(name: str, argument: Any, flags: int) -> _CharTest:
    """The test a character must pass for one LITERAL, NOT_LITERAL, ANY or IN item."""
    folding = bool(flags & re.IGNORECASE)
    if name == "ANY":
        if flags & re.DOTALL:
            return lambda char: True
        return lambda char: char != "\n"
    if name in ("LITERAL", "NOT_LITERAL"):
        literal = chr(argument)
        wanted = name == "LITERAL"
        if folding:
            folded = _fold(literal)
            return lambda char: (_fold(char) == folded) is wanted
        return lambda char: (char == literal) is wanted
    negated = False
    chars: set[str] = set()
    ranges: list[tuple[int, int]] = []
    categories: list[tuple[frozenset[str], bool]] = []
    for op, value in argument:
        kind = op.name
        if kind == "NEGATE":
            negated = True
        elif kind == "LITERAL":
            chars.add(chr(value))
        elif kind == "RANGE":
            ranges.append(value)
        elif kind == "CATEGORY":
            categories.append(_CATEGORIES[value.name])
        else:
            raise RegexError(f"{kind} in a character class is not supported")

    def member(char: str) -> bool:
        if char in chars:
            return True
        code = ord(char)
        for low, high in ranges:
            if low <= code <= high:
                return True
        return any((char in members) is not negate for members, negate in categories)

    if folding:
        # A letter is in the class if either of its cases is, as in re.
        def folded_member(char: str) -> bool:
            if member(char):
                return True
            return char.isascii() and char.isalpha() and member(char.swapcase())

        return lambda char: folded_member(char) is not negated
    return lambda char: member(char) is not negated


def _after(char: str) -> int:
    if char == "\n":
        return _AFTER_NEWLINE
    return _AFTER_WORD if char in _WORD else _AFTER_OTHER


def _anchor_holds(anchor: str, before: int, char: str | None, final: bool) -> bool:
    """Whether `anchor` holds between what is `before` and `char` (None: the end)."""
    if anchor in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
        return before == _AT_START
    if anchor == "AT_BEGINNING_LINE":
        return before in (_AT_START, _AFTER_NEWLINE)
    if anchor == "AT_END":
        return char is None or (final and char == "\n")
    if anchor == "AT_END_LINE":
        return char is None or char == "\n"
    if anchor == "AT_END_STRING":
        return char is None
    word_before = before == _AFTER_WORD
    word_after = char is not None and char in _WORD
    if anchor == "AT_BOUNDARY":
        return word_before != word_after
    if anchor == "AT_NON_BOUNDARY":
        # re never finds \B in an empty string.
        return word_before == word_after and not (before == _AT_START and char is None)
    raise RegexError(f"{anchor} is not supported")


class _State(dict[Any, "_State | None"]):
    """A DFA state: the NFA states pending at a position, and what precedes it.

    As a dict it maps the next character to the next state, or to None when
    the pattern has matched by then.
    """

    __slots__ = ("before", "ends", "pending")

    def __init__(self, pending: frozenset[int], before: int) -> None:
        super().__init__()
        self.pending = pending
        self.before = before
        self.ends: bool | None = None


class Regex:
    """A pattern that answers `search` in time linear in the text."""

    def __init__(self, pattern: str) -> None:
        """Compile `pattern` (re's syntax, ASCII mode); RegexError if it is refused.

        `re.error` and the other errors re.compile raises pass through too;
        callers compile with re first for its messages.
        """
        try:
            tree = _parser.parse(pattern, re.ASCII)
            nfa = _Nfa()
            match = nfa.add(_MATCH, [])
            self._start = nfa.sequence(tree.data, tree.state.flags, match)
        except RecursionError:
            raise RegexError("nested too deeply") from None
        self.pattern = pattern
        self._nfa = nfa
        self._match = match
        anchors = set(nfa.anchors) - {""}
        # Without anchors, what precedes a position never matters: one state
        # per set of NFA states, and more transitions found in the cache.
        self._context = bool(anchors)
        self._final_newline = "AT_END" in anchors
        self._cache: dict[tuple[frozenset[int], int], _State] = {}
        self._cached = 0
        self._initial = self._state(frozenset(), _AT_START)

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Regex) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def search(self, text: str) -> bool:
        """Whether the pattern matches anywhere in `text`."""
        state = self._initial
        # $ also matches before a final newline: that last step is taken apart.
        final_newline = self._final_newline and text.endswith("\n")
        for char in text[:-1] if final_newline else text:
            following = state.get(char)
            if following is None:
                if char in state:
                    return True
                following = self._step(state, char, final=False)
                if following is None:
                    return True
            state = following
        if final_newline:
            following = self._step(state, "\n", final=True)
            if following is None:
                return True
            state = following
        if state.ends is None:
            state.ends = self._match in self._closure(state, None, final=False)
        return state.ends

    def _state(self, pending: frozenset[int], before: int) -> _State:
        if not self._context:
            before = _AT_START
        key = (pending, before)
        state = self._cache.get(key)
        if state is None:
            self._count(len(pending) + 1)
            state = self._cache[key] = _State(pending, before)
        return state

    def _count(self, cost: int) -> None:
        """Account for `cost` more in the cache, emptying it first if it would overflow."""
        self._cached += cost
        if self._cached > _MAX_CACHED:
            # States reach each other through their transitions: unlink them
            # all, or the state a search stands in would keep them alive.
            for state in self._cache.values():
                state.clear()
            self._cache.clear()
            self._cached = cost

    def _closure(self, state: _State, char: str | None, *, final: bool) -> set[int]:
        """The NFA states reachable without consuming, from `state` and a fresh start."""
        nfa = self._nfa
        reached: set[int] = set()
        stack = [self._start, *state.pending]
        while stack:
            index = stack.pop()
            if index in reached:
                continue
            reached.add(index)
            kind = nfa.kinds[index]
            if kind == _SPLIT or (
                kind == _ASSERT and _anchor_holds(nfa.anchors[index], state.before, char, final)
            ):
                stack.extend(nfa.targets[index])
        return reached

    def _step(self, state: _State, char: str, *, final: bool) -> _State | None:
        """The state after `char`, cached on `state`; None if the pattern matched first."""
        reached = self._closure(state, char, final=final)
        following: _State | None = None
        if self._match not in reached:
            nfa = self._nfa
            pending = frozenset(
                nfa.targets[index][0]
                for index in reached
                if nfa.kinds[index] == _CHAR and nfa.tests[index](char)
            )
            following = self._state(pending, _after(char))
        if not final:
            self._count(1)
            state[char] = following
        return following
