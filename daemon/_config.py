"""The daemon's config file: a TOML file whose keys are the `serve` command's own flags.

Every option of `serve` has a key, derived from its parameter name, so a flag added
later has one with no further work: ``--workers`` is ``workers``, ``--address``
(repeatable) is ``addresses``, a list. Options whose name starts with the name of
one of `TABLES` live in that table, as containerd's and docker-registry's configs
group theirs: ``--http-namespace`` is ``namespace`` in ``[http]``, ``--http`` itself
(the registry's address) is ``address`` there, ``--gc-pause-threshold`` is
``pause_threshold`` in ``[gc]``.

The file gives the defaults of the flags (click's `default_map`), so a flag given on
the command line (or through its environment variable) wins over the file, and the
file over the built-in default. Each value is checked against its option's type and
range when the file is read; an unknown key or a bad value is an InvalidArgument that
names the file and the key.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import click

from contentd.content import redact_url
from contentd.errdefs import InvalidArgument

#: Tables of the config file: an option whose parameter name starts with one of these
#: and an underscore lives in it. Every other option is a top-level key.
TABLES: Final = ("http", "tls", "gc", "log", "metrics")
#: The config file a daemon run by root reads when not given one (and it exists).
SYSTEM_CONFIG: Final = Path("/etc/contentd/config.toml")
#: The config file's name in the store root, read by a daemon run by any other user.
CONFIG_NAME: Final = "config.toml"


@dataclass(frozen=True)
class ConfigKey:
    """One key of the config file and the option of `serve` it sets."""

    option: click.Option
    #: The table it lives in, or None at the top level.
    table: str | None
    #: Its name in its table.
    key: str

    @property
    def name(self) -> str:
        """The key as errors and the docs name it: ``workers``, ``gc.pause_threshold``."""
        return f"{self.table}.{self.key}" if self.table else self.key

    @property
    def flag(self) -> str:
        """The option's flag: ``--gc-pause-threshold``; both forms for a switch."""
        flag = max(self.option.opts, key=len)
        return f"{flag}/{self.option.secondary_opts[0]}" if self.option.secondary_opts else flag

    @property
    def default(self) -> Any:
        """The option's built-in default; None where it has none (or one made at run time)."""
        value = self.option.get_default(click.Context(click.Command(None)), call=False)
        if isinstance(value, (list, tuple)):
            return tuple(value) or None
        # click marks an option without a default with a sentinel of its own.
        return value if isinstance(value, (str, int, float, Path)) else None

    def toml_type(self) -> str:
        """The TOML type the key takes: string, integer, float, boolean, or an array of one;
        a choice's strings are named."""
        kind = _toml_type(self.option)
        if isinstance(self.option.type, click.Choice):
            kind += " (" + ", ".join(f'"{choice}"' for choice in self.option.type.choices) + ")"
        return f"array of {kind}s" if self.option.multiple else kind

    def check(self, value: Any) -> Any:
        """`value`, from the file, converted as the flag's would be; InvalidArgument naming the
        key when its TOML type or its value does not fit."""
        if self.option.multiple:
            if not isinstance(value, list):
                raise InvalidArgument(
                    f"{self.name}: expected an array of {_toml_type(self.option)}s"
                )
            return tuple(self._check_one(item) for item in value)
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        expected = _toml_type(self.option)
        if not isinstance(value, _PYTHON_TYPES[expected]) or (
            expected != "boolean" and isinstance(value, bool)
        ):
            article = "an" if expected[0] in "aeiou" else "a"
            raise InvalidArgument(f"{self.name}: expected {article} {expected}, not {value!r}")
        try:
            return self.option.type.convert(value, self.option, None)
        except click.BadParameter as exc:
            raise InvalidArgument(f"{self.name}: {exc.message.rstrip('.')}") from None


_PYTHON_TYPES: Final[Mapping[str, type | tuple[type, ...]]] = {
    "boolean": bool,
    "integer": int,
    "float": (int, float),
    "string": str,
}


def _toml_type(option: click.Option) -> str:
    if option.is_flag or isinstance(option.type, click.types.BoolParamType):
        return "boolean"
    if isinstance(option.type, click.types.IntParamType):
        return "integer"
    if isinstance(option.type, click.types.FloatParamType):
        return "float"
    return "string"


def config_keys(command: click.Command) -> list[ConfigKey]:
    """The config file's keys: one for each option of `command` but --config itself."""
    keys = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in (None, "config"):
            continue
        table, _, rest = param.name.partition("_")
        if table in TABLES and rest:
            keys.append(ConfigKey(param, table, rest))
        elif param.name in TABLES:
            # The table's own flag (--http HOST:PORT) is its address.
            keys.append(ConfigKey(param, param.name, "address"))
        else:
            keys.append(ConfigKey(param, None, param.name))
    return keys


def default_config_path(root: Path) -> Path:
    """Where a daemon on `root` looks for its config file when given none."""
    return SYSTEM_CONFIG if os.geteuid() == 0 else root / CONFIG_NAME


def read_config(path: Path, command: click.Command) -> dict[str, Any]:
    """The config file at `path` as defaults for `command`'s parameters (a click
    `default_map`), every value checked; InvalidArgument naming the file and the key."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise InvalidArgument(f"config {path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config {path}: not valid TOML: {exc}") from None
    keys = {key.name: key for key in config_keys(command)}
    defaults: dict[str, Any] = {}
    for name, value in _flatten(document):
        key = keys.get(name)
        if key is None:
            near = difflib.get_close_matches(name, keys, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            if name in TABLES:
                hint = f" ({name} is a table: [{name}] holds its keys)"
            raise InvalidArgument(f"config {path}: unknown key {name}{hint}")
        try:
            assert key.option.name is not None  # config_keys keeps named options only
            defaults[key.option.name] = key.check(value)
        except InvalidArgument as exc:
            raise InvalidArgument(f"config {path}: {exc.message}") from None
    return defaults


def _flatten(document: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for name, value in document.items():
        if name in TABLES and isinstance(value, dict):
            for key, item in value.items():
                yield f"{name}.{key}", item
        else:
            yield name, value


def effective_config(command: click.Command, params: Mapping[str, Any]) -> dict[str, Any]:
    """The daemon's settings by config key, fit to log: URLs with their secrets masked
    (`redact_url`), paths as strings; options without a value are left out."""
    shown: dict[str, Any] = {}
    for key in config_keys(command):
        value = params.get(key.option.name or "")
        if value is None:
            continue
        shown[key.name] = (
            [_shown(item) for item in value] if isinstance(value, tuple) else _shown(value)
        )
    return shown


def _shown(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # A JSON string is a TOML basic string.
    return json.dumps(str(value), ensure_ascii=False)


def _help(option: click.Option) -> str:
    return " ".join((option.help or "").split())


def default_config(command: click.Command) -> str:
    """A config file that sets every key to its default, each with its flag's help: what
    `contentd config default` prints. Keys without a default are there, commented out."""
    lines = [
        "# contentd serve's config file (TOML). Each key is a flag of `contentd serve`;",
        "# a flag given on the command line wins over the file. Uncomment to set.",
    ]
    table: str | None = None
    for key in sorted(
        config_keys(command), key=lambda key: (key.table or "", key.table is not None)
    ):
        if key.table != table:
            table = key.table
            lines += ["", f"[{table}]"]
        lines += ["", f"# {key.flag}: {_help(key.option)}"]
        if key.default is None:
            lines.append(f"# {key.key} = {_placeholder(key)}")
        else:
            lines.append(f"{key.key} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def _placeholder(key: ConfigKey) -> str:
    kind = _toml_type(key.option)
    if kind == "string":
        example = _toml_value(key.option.metavar or key.option.type.name.upper())
    else:
        example = f"<{kind}>"
    return f"[{example}]" if key.option.multiple else example


def keys_table(command: click.Command) -> str:
    """The config keys as a Markdown table (the README's, which a test compares)."""
    rows = [
        "| Key | Flag | Type | Default | Meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in config_keys(command):
        shown = "-" if key.default is None else f"`{_toml_value(key.default)}`"
        rows.append(
            f"| `{key.name}` | `{key.flag}` | {key.toml_type()} | {shown} | {_help(key.option)} |"
        )
    return "\n".join(rows) + "\n"
