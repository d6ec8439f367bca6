r"""containerd's filter language: select blobs and ingests by their fields.

A filter is one or more *selectors* joined by ``,``; an item matches when every
selector does. List calls take several filters and keep an item when any one
of them matches. A selector is a field path, optionally followed by an
operator and a value::

    labels.foo                        the label "foo" is present, whatever its value
    digest==sha256:4f0b...            equal
    labels.stage!=prod                not equal (also true when the label is absent)
    labels.version~=^1\.2             regular expression, searched anywhere in the value
    size==1024,labels.keep            both selectors
    labels."a.b c=d"==x               a quoted path component: the label key "a.b c=d"
    labels.note=="too complex, yo"    a quoted value
    ref~=/^layer-[0-9]+$/             a regular expression quoted with / (or |)

Grammar::

    filter    = selector *("," selector)
    selector  = fieldpath [operator value]
    fieldpath = field *("." field)
    field     = 1*(ASCII letter / digit / "_") / "..."
    operator  = "==" / "!=" / "~="
    value     = unquoted / "..." / /.../ / |...|      (the last two only after ~=)
    unquoted  = letters, marks, numbers, punctuation and symbols up to the next
                "," or whitespace, not starting with . = ! ~ " / or |

Whitespace may stand between any two tokens. Quoted text takes Go's string
escapes: ``\a \b \f \n \r \t \v \\``, the quote character itself, ``\ooo`` and
``\xhh`` (bytes, which must add up to UTF-8), ``\uhhhh`` and ``\Uhhhhhhhh``; it
may not hold a raw newline or NUL. So in ``/.../`` a regex escape needs
doubling (``/\\d+/``), while an unquoted value passes backslashes through
(``\d+``). Path components are joined back with ``.`` by the adaptors, so
``labels."a.b"`` and ``labels.a.b`` both name the label ``a.b``.

An absent field reads as ``""``: ``==`` needs the field present, while ``!=``
and ``~=`` compare that empty value (``labels.x!=y`` keeps items without
``x``), as in containerd. An empty filter string matches everything, so a list
of filters that holds one does too.

Regular expressions take Go's syntax, as in containerd. RE2, whose syntax Go's
regexp copies, compiles them and searches in time linear in the text whatever
the pattern, so what only a backtracking engine can do (backreferences,
lookaround, conditionals, atomic groups, possessive repeats) is refused, as Go
refuses it. ``\d \w \s \b`` are ASCII, ``(?i)`` folds Unicode, and ``$``
matches at the end of the text only (at each line's end under ``(?m)``).
``\C`` (any byte) and repeat counts of ten digits or more, which RE2 takes (the
latter as literal text), are refused as Go refuses them. Patterns are capped at
1024 characters and at 1 MiB for their compiled program and match cache, and a
call's filters at 64 KiB together.

Where this parser departs from containerd 1.6: whitespace is allowed before
``.``, ``,`` and the end (containerd accepts it only after them and around
operators); an invalid regular expression is an error at parse time (containerd
logs it and matches nothing), and so is one past the caps above (Go has none,
and takes ``\pL{1000}``), while ``(?<name>...)`` is a named group as from Go
1.22; byte escapes that do not form UTF-8, and ``\u`` escapes naming
surrogates, are errors; an unquoted value must start with a printable
character; and error positions count characters, not UTF-8 bytes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import re2

from contentd.errdefs import InvalidArgument

__all__ = [
    "MATCH_ALL",
    "MAX_FILTER_LENGTH",
    "MAX_PATTERNS",
    "Adaptor",
    "Filter",
    "fields_adaptor",
    "info_adaptor",
    "parse",
    "parse_all",
    "required_labels",
    "status_adaptor",
]

Adaptor = Callable[[Sequence[str]], tuple[str, bool]]
"""Looks a field path up on one item: ``(value, present)``, and ``("", False)`` when absent."""


class _Pattern(Protocol):
    """What filters use of a compiled re2 pattern (re2 ships no type information)."""

    def search(self, text: bytes) -> object | None: ...


class Filter(Protocol):
    """A parsed filter: decides whether one item, seen through an adaptor, matches."""

    def match(self, adaptor: Adaptor) -> bool:
        """Whether the item that *adaptor* describes matches."""


_ABSENT: Final = ("", False)

# Unicode's White_Space property, which is what Go's unicode.IsSpace tests.
_WHITESPACE: Final = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_SPACE: Final = re.compile(f"[{_WHITESPACE}]+")
_FIELD: Final = re.compile(r"[A-Za-z0-9_]+")
_OPERATORS: Final = frozenset({"==", "!=", "~="})
_VALUE_RUN: Final = re.compile(f"[^,{_WHITESPACE}]+")
# Starting a value with these would read as a separator or operator in containerd.
_NOT_VALUE_START: Final = frozenset(".=!~")
_REGEX_QUOTES: Final = frozenset("/|")
_QUOTED_TEXT: Final = {quote: re.compile(f"[^{quote}\\\\\n\0]+") for quote in '"/|'}
_SIMPLE_ESCAPES: Final = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
}
_NUMERIC_ESCAPE: Final = re.compile(r"[0-7]{3}|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}")
_RAW_IN_QUOTES: Final = {"\n": ("newline", "\\n"), "\0": ("NUL character", "\\x00")}

_MAX_PATTERN: Final = 1024
# What one pattern's compiled program and match caches may take: a compiled pattern
# holds about half of it, and re2 keeps the last 128 compiled. RE2's default is
# 8 MiB, and Go's regexp has no such bound; every repeat of an ASCII class up to
# {1000} fits.
_PATTERN_MEMORY: Final = 1 << 20
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.max_mem = _PATTERN_MEMORY
# A caller's bad pattern is their error, not something for the daemon's stderr.
_RE2_OPTIONS.log_errors = False
# Filters ask only whether a pattern occurs, so no group need be tracked.
_RE2_OPTIONS.never_capture = True
_RE2_TOO_LARGE: Final = "pattern too large - compile failed"
# Read only once RE2 has accepted a pattern, so its classes are well formed: what
# RE2 takes and Go's regexp refuses. \C matches any byte, which can split a UTF-8
# character; RE2 reads a repeat count of ten digits or more as literal text.
_GO_REFUSES: Final = re.compile(
    r"""
      \\Q.*?(?:\\E|\Z)                            # literal text
    | \[\^?\]?(?:\[:\^?[a-z]+:\]|\\.|[^]\\])*\]   # a character class
    | (?P<byte>\\C)
    | \\.
    | (?P<count>\{(?=[0-9,]*[1-9][0-9]{9})(?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*)?)?\})
    """,
    re.DOTALL | re.VERBOSE,
)
_GO_REASONS: Final = {"byte": "invalid escape sequence", "count": "invalid repetition size"}

# Error messages travel in gRPC trailers, which are small; quote only the start of a long filter.
_SHOWN_CHARS: Final = 200
_CHAR_ESCAPES: Final = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


class _MatchAll:
    __slots__ = ()

    def match(self, adaptor: Adaptor) -> bool:
        return True

    def __repr__(self) -> str:
        return "MATCH_ALL"


MATCH_ALL: Final[Filter] = _MatchAll()
"""The filter that matches every item: what no filters, or an empty one, mean."""


@dataclass(frozen=True, slots=True)
class _Present:
    path: tuple[str, ...]

    def match(self, adaptor: Adaptor) -> bool:
        return adaptor(self.path)[1]


@dataclass(frozen=True, slots=True)
class _Equal:
    path: tuple[str, ...]
    value: str

    def match(self, adaptor: Adaptor) -> bool:
        value, present = adaptor(self.path)
        return present and value == self.value


@dataclass(frozen=True, slots=True)
class _NotEqual:
    path: tuple[str, ...]
    value: str

    def match(self, adaptor: Adaptor) -> bool:
        return adaptor(self.path)[0] != self.value


@dataclass(frozen=True, slots=True)
class _Search:
    path: tuple[str, ...]
    pattern: _Pattern

    def match(self, adaptor: Adaptor) -> bool:
        # Bytes spare re2 mapping match offsets back to characters, which a yes or
        # no does not need; surrogatepass keeps a stray surrogate from raising.
        text = adaptor(self.path)[0].encode("utf-8", "surrogatepass")
        return self.pattern.search(text) is not None


@dataclass(frozen=True, slots=True)
class _All:
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        # A loop, not all() over a generator: this runs once per listed item.
        for selector in self.filters:  # noqa: SIM110
            if not selector.match(adaptor):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _Any:
    filters: tuple[Filter, ...]

    def match(self, adaptor: Adaptor) -> bool:
        # A loop, not any() over a generator: this runs once per listed item.
        for alternative in self.filters:  # noqa: SIM110
            if alternative.match(adaptor):
                return True
        return False


#: The longest filter string accepted, and the most characters a call's
#: filters may hold together. Parsing and matching cost grows with the number
#: of selectors; real filters are a few dozen characters.
MAX_FILTER_LENGTH: Final = 64 * 1024


#: The most regular expressions one call's filters may hold: each compiles
#: within its own memory budget, and thousands would fit in 64 KiB of filters.
MAX_PATTERNS: Final = 64


def parse(expression: str) -> Filter:
    """Parse one filter string; the empty string matches everything.

    Raises `InvalidArgument`, saying where and what was expected, when the
    filter is malformed, holds an invalid regular expression, or is longer
    than `MAX_FILTER_LENGTH` characters.
    """
    return _parse(expression, [0])


def _parse(expression: str, patterns: list[int]) -> Filter:
    if not expression:
        return MATCH_ALL
    if len(expression) > MAX_FILTER_LENGTH:
        raise InvalidArgument(
            f"filter {_show(expression)}: longer than {MAX_FILTER_LENGTH} characters"
        )
    return _Parser(expression, patterns).filter()


def parse_all(expressions: Iterable[str]) -> Filter:
    """Parse several filter strings into one that matches when any of them does.

    No filters at all, or any empty one among them, match everything. Raises
    `InvalidArgument` for the first malformed filter, and when the filters
    hold more than `MAX_FILTER_LENGTH` characters together: each item is
    matched against every one of them.
    """
    if isinstance(expressions, str):
        # A str is an Iterable[str] of characters, which would parse without complaint.
        raise TypeError("parse_all takes an iterable of filter strings, not a single string")
    expressions = list(expressions)
    total = sum(map(len, expressions))
    if total > MAX_FILTER_LENGTH and len(expressions) > 1:
        raise InvalidArgument(
            f"{len(expressions)} filters of {total} characters together: "
            f"longer than {MAX_FILTER_LENGTH} characters"
        )
    patterns = [0]
    filters = [_parse(expression, patterns) for expression in expressions]
    if not filters or any(parsed is MATCH_ALL for parsed in filters):
        return MATCH_ALL
    return filters[0] if len(filters) == 1 else _Any(tuple(filters))


def required_labels(selector: Filter) -> list[dict[str, str]] | None:
    """Label values an item must carry to match `selector`, for narrowing a scan.

    One mapping per alternative: an item can match only if, for one of them,
    its labels hold every key with that value. None when some alternative
    needs no particular label value, so nothing can be narrowed. This is a
    necessary condition only; `match` still decides.
    """
    if isinstance(selector, _Equal):
        if len(selector.path) > 1 and selector.path[0] == "labels":
            return [{".".join(selector.path[1:]): selector.value}]
        return None
    if isinstance(selector, _All):
        needed: dict[str, str] = {}
        for part in selector.filters:
            alternatives = required_labels(part)
            if alternatives is not None and len(alternatives) == 1:
                needed.update(alternatives[0])
        return [needed] if needed else None
    if isinstance(selector, _Any):
        union: list[dict[str, str]] = []
        for alternative in selector.filters:
            narrowed = required_labels(alternative)
            if narrowed is None:
                return None
            union.extend(narrowed)
        return union
    return None


def info_adaptor(digest: str, size: int, labels: Mapping[str, str]) -> Adaptor:
    """An adaptor for a committed blob.

    Fields: ``digest``; ``size`` in decimal (containerd leaves size unsupported);
    ``labels.<key>``, the key being the rest of the path joined with ``.``.
    Longer paths such as ``digest.x`` are absent, where containerd ignores the rest.
    """

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return _ABSENT
        name = path[0]
        if name == "labels":
            return _label(labels, path)
        if len(path) > 1:
            return _ABSENT
        if name == "digest":
            return digest, True
        if name == "size":
            return str(size), True
        return _ABSENT

    return field


def status_adaptor(ref: str, offset: int, total: int, expected: str) -> Adaptor:
    """An adaptor for an ingest in progress.

    Fields: ``ref``; ``offset`` and ``total`` in decimal; ``expected``, the
    digest the ingest should commit to, absent when it has none.
    """

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if len(path) != 1:
            return _ABSENT
        name = path[0]
        if name == "ref":
            return ref, True
        if name == "offset":
            return str(offset), True
        if name == "total":
            return str(total), True
        if name == "expected" and expected:
            return expected, True
        return _ABSENT

    return field


_NO_MAPS: Final[Mapping[str, Mapping[str, str]]] = {}


def fields_adaptor(
    fields: Mapping[str, str], maps: Mapping[str, Mapping[str, str]] = _NO_MAPS
) -> Adaptor:
    """An adaptor for any item, from its field values by name.

    `fields` holds plain fields by dotted name (``name``, ``target.digest``):
    a path names one when its components, joined with ``.``, do. A field
    whose value is ``""`` is absent, as in containerd's image and lease
    adaptors. `maps` holds the fields whose first component prefixes a key
    (``labels``, ``annotations``): the key is the rest of the path joined with
    ``.``, and a value there is present even when empty. A first component in
    `maps` is never looked up in `fields`. Longer paths, such as ``name.x``,
    are absent, where containerd ignores the rest. An image and a lease::

        fields_adaptor(
            {"name": name, "target.digest": digest, "target.mediatype": media_type},
            {"labels": labels, "annotations": annotations},
        )
        fields_adaptor({"id": lease_id}, {"labels": labels})
    """

    def field(path: Sequence[str]) -> tuple[str, bool]:
        if not path:
            return _ABSENT
        values = maps.get(path[0])
        if values is not None:
            return _label(values, path)
        value = fields.get(".".join(path))
        return (value, True) if value else _ABSENT

    return field


def _label(labels: Mapping[str, str], path: Sequence[str]) -> tuple[str, bool]:
    value = labels.get(".".join(path[1:]))
    return _ABSENT if value is None else (value, True)


class _Parser:
    """Reads one non-empty filter string, left to right, into a Filter."""

    __slots__ = ("_patterns", "_pos", "_text")

    def __init__(self, text: str, patterns: list[int]) -> None:
        self._text = text
        self._pos = 0
        # Regular expressions compiled so far for this call, shared by its filters.
        self._patterns = patterns

    def filter(self) -> Filter:
        selectors = [self._selector()]
        while self._take(","):
            selectors.append(self._selector())
        if self._pos < len(self._text):
            raise self._error(f'expected "," or the end of the filter at position {self._pos}')
        return selectors[0] if len(selectors) == 1 else _All(tuple(selectors))

    def _selector(self) -> Filter:
        path = [self._field()]
        while self._take("."):
            path.append(self._field())
        self._skip_space()
        if self._pos == len(self._text) or self._text[self._pos] == ",":
            return _Present(tuple(path))
        operator = self._operator()
        self._skip_space()
        value_at = self._pos
        value = self._value(regex=operator == "~=")
        if operator == "==":
            return _Equal(tuple(path), value)
        if operator == "!=":
            return _NotEqual(tuple(path), value)
        return _Search(tuple(path), self._compile(value, value_at))

    def _field(self) -> str:
        self._skip_space()
        start = self._pos
        if self._text.startswith('"', start):
            return self._quoted()
        field = _FIELD.match(self._text, start)
        if field is None:
            raise self._error(f'expected a field name or a "quoted" field at position {start}')
        self._pos = field.end()
        return field.group()

    def _operator(self) -> str:
        start = self._pos
        operator = self._text[start : start + 2]
        if operator not in _OPERATORS:
            raise self._error(f"expected an operator (==, !=, ~=) at position {start}")
        self._pos = start + 2
        return operator

    def _value(self, *, regex: bool) -> str:
        text, start = self._text, self._pos
        first = text[start : start + 1]
        if first == '"' or (regex and first in _REGEX_QUOTES):
            return self._quoted()
        if first in _REGEX_QUOTES:
            raise self._error(
                f"expected a value at position {start} ({first}...{first} quotes only "
                'regular expressions after ~=; use "..." here)'
            )
        run = _VALUE_RUN.match(text, start)
        value = "" if run is None else run.group()
        if not value.isprintable():
            value = value[: next(i for i, char in enumerate(value) if not char.isprintable())]
        if not value:
            raise self._error(f"expected a value at position {start}")
        if value[0] in _NOT_VALUE_START:
            raise self._error(
                f"expected a value at position {start} "
                f'(quote a value that starts with "{value[0]}")'
            )
        self._pos = start + len(value)
        return value

    def _quoted(self) -> str:
        text, start = self._text, self._pos
        quote = text[start]
        plain = _QUOTED_TEXT[quote]
        # Built as bytes because \x and octal escapes denote bytes, as in Go.
        out = bytearray()
        pos = start + 1
        while True:
            run = plain.match(text, pos)
            if run is not None:
                # A lone surrogate passes here and then fails the UTF-8 check below.
                out += run.group().encode("utf-8", "surrogatepass")
                pos = run.end()
            if pos == len(text):
                raise self._error(f"quote at position {start} is not closed")
            char = text[pos]
            if char == quote:
                break
            if char in _RAW_IN_QUOTES:
                name, escape = _RAW_IN_QUOTES[char]
                raise self._error(
                    f"unexpected {name} in quoted text at position {pos} (write {escape})"
                )
            pos = self._escape(pos, quote, out)
        self._pos = pos + 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error(
                f"quoted text at position {start} is not valid UTF-8 "
                "(check its \\x and octal escapes)"
            ) from None

    def _escape(self, pos: int, quote: str, out: bytearray) -> int:
        """Decode the escape sequence at *pos* onto *out*; return where it ends."""
        text = self._text
        kind = text[pos + 1 : pos + 2]
        if kind == quote:
            out += quote.encode()
            return pos + 2
        if kind in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[kind]
            return pos + 2
        numeric = _NUMERIC_ESCAPE.match(text, pos + 1)
        if numeric is None:
            raise self._error(
                f"invalid escape sequence at position {pos} (use \\a \\b \\f \\n \\r \\t \\v "
                f"\\\\ \\{quote} \\ooo \\xhh \\uhhhh or \\Uhhhhhhhh)"
            )
        digits = numeric.group()
        if kind in ("u", "U"):
            code = int(digits[1:], 16)
            if code > sys.maxunicode or 0xD800 <= code <= 0xDFFF:
                raise self._error(f"escape at position {pos} does not name a Unicode character")
            out += chr(code).encode()
        else:
            code = int(digits[1:], 16) if kind == "x" else int(digits, 8)
            if code > 0xFF:
                raise self._error(f"octal escape at position {pos} is above \\377")
            out.append(code)
        return numeric.end()

    def _compile(self, pattern: str, at: int) -> _Pattern:
        if len(pattern) > _MAX_PATTERN:
            raise self._error(
                f"regular expression at position {at} is longer than {_MAX_PATTERN} characters"
            )
        # Checked before compiling: each may take up to its memory budget.
        self._patterns[0] += 1
        if self._patterns[0] > MAX_PATTERNS:
            raise self._error(
                f"regular expression at position {at}: more than the {MAX_PATTERNS} "
                "a call's filters may hold"
            )
        reason: str | None
        try:
            compiled: _Pattern = re2.compile(pattern, _RE2_OPTIONS)
        except re2.error as exc:
            reason = _re2_reason(exc.args[0])
        else:
            reason = _refused_by_go(pattern)
            if reason is None:
                return compiled
        raise self._error(f"invalid regular expression at position {at}: {reason}")

    def _skip_space(self) -> None:
        space = _SPACE.match(self._text, self._pos)
        if space is not None:
            self._pos = space.end()

    def _take(self, char: str) -> bool:
        self._skip_space()
        if self._text.startswith(char, self._pos):
            self._pos += 1
            return True
        return False

    def _error(self, problem: str) -> InvalidArgument:
        return InvalidArgument(f"filter {_show(self._text)}: {problem}")


def _re2_reason(message: object) -> str:
    """What is wrong with a pattern, from re2's message (UTF-8 bytes)."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    # What is wrong, then after ": " the part of the pattern at fault, which may be long.
    what, _, part = str(message).partition(": ")
    if what == _RE2_TOO_LARGE:
        return f"too large to compile within {_PATTERN_MEMORY >> 20} MiB"
    return f"{what}: {_show(part)}" if part else what


def _refused_by_go(pattern: str) -> str | None:
    """Why Go's regexp refuses *pattern*, which RE2 accepted; None when it does not."""
    for token in _GO_REFUSES.finditer(pattern):
        if token.lastgroup is not None:
            return f"{_GO_REASONS[token.lastgroup]}: {_show(token.group())}"
    return None


def _show(expression: str) -> str:
    if len(expression) <= _SHOWN_CHARS:
        return _quote(expression)
    return f"{_quote(expression[:_SHOWN_CHARS])}... ({len(expression)} characters)"


def _quote(text: str) -> str:
    """*text* in double quotes with Go's %q escapes, so that any character shows."""
    return '"' + "".join(map(_quote_char, text)) + '"'


def _quote_char(char: str) -> str:
    escaped = _CHAR_ESCAPES.get(char)
    if escaped is not None:
        return escaped
    if char.isprintable():
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
