"""The script's inputs, checked before anything is loaded: a YAML or JSON config file, and data file paths.

A config file stands for flags: each key is checked against its field's type, then turned into the
flag it names, placed before the command line's own flags (argparse keeps the last, so those win).
A key written twice, an empty file and a path that is not a regular file are refused in one line;
so is any error raised while the argument dataclasses are built from the flags (a missing optional
package such as DeepSpeed included), naming the setting and what to install or change.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import types
import typing
from typing import Any

import yaml

from .errors import MMRConfigError

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def not_a_file(path: str) -> str | None:
    """What ``path`` is when it exists but is no regular file (a folder, a named pipe, ...), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"))
    kinds += ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((word for test, word in kinds if test(mode)), "not a regular file")


def check_input_file(flag: str, path: str) -> None:
    """One line naming ``flag`` unless ``path`` is an existing regular file (a pipe cannot be read twice)."""
    kind = not_a_file(path)
    if kind is not None:
        raise MMRConfigError(f"{flag} {path!r} is {kind}; name a regular file")
    if not os.path.isfile(path):
        raise MMRConfigError(f"{flag} {path!r} does not exist")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML and JSON would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (lines {lines[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str, known: set[str], argument_classes: tuple[type, ...]) -> list[str]:
    """The flags that a YAML or JSON config file stands for; one line naming the file and what is wrong."""
    check_input_file("config file", path)
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.load(handle, Loader=_UniqueKeyLoader)  # YAML is a superset of JSON
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "its syntax"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        if "given twice" in problem:
            raise MMRConfigError(f"config file {path}: {problem}") from None
        raise MMRConfigError(f"config file {path}: {where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise MMRConfigError(f"config file {path} cannot be read: {error}") from None
    if values is None:
        raise MMRConfigError(f"config file {path} is empty; write one 'name: value' line per argument")
    if not isinstance(values, dict):
        raise MMRConfigError(f"config file {path!r} must hold a mapping of argument names to values")
    unknown_keys = [key for key in values if key not in known]
    if unknown_keys:
        raise MMRConfigError(f"config file {path}: unknown key {unknown_keys[0]!r}; see --help for the names")
    return config_to_flags(check_config_types(values, path, argument_classes))


def parse_arguments(parser: Any, argv: list[str]) -> tuple:
    """``parser.parse_args_into_dataclasses`` of ``argv`` (a config file first stands for its flags).

    Everything the dataclasses raise while they are built becomes one line: a ``ValueError`` says what is
    wrong with a value; a missing package (DeepSpeed for ``deepspeed``) names the setting and what to install.
    """
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        known = {action.dest for action in parser._actions}  # argparse keeps the destinations only here
        argv = read_config_file(argv[0], known, tuple(parser.dataclass_types)) + argv[1:]
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ImportError as error:  # ModuleNotFoundError and importlib's PackageNotFoundError among them
        requirement = _missing_requirement(error)
        package = re.match(r"[A-Za-z0-9_.\-]*", requirement).group(0)
        setting = next((flag for flag in argv if flag.startswith("--") and package and package in flag), "a setting")
        raise MMRConfigError(
            f'{setting} needs the package {package!r}, which is not installed: pip install "{requirement}", '
            f"or remove {setting}"
        ) from None
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise MMRConfigError(lines[0]) from None
    if unknown:
        raise MMRConfigError(f"unknown argument {unknown[0]!r}; see --help")
    return tuple(parsed)


def _missing_requirement(error: ImportError) -> str:
    """The requirement an import error names: the module, or the quoted requirement of a version check."""
    name = getattr(error, "name", None)
    if name and " " not in name:
        return name
    quoted = re.search(r"'([^']+)'", str(error))
    return quoted.group(1) if quoted else str(error).split()[0]


def _accepts(kind: Any, value: Any) -> bool:
    """Whether a config value can stand for a field of type ``kind`` (as its command-line flag would parse it)."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(argument, value) for argument in arguments)
    if kind is type(None):
        return value is None
    if origin is typing.Literal:
        return value in arguments
    if origin in (list, tuple):  # a flag with nargs also takes a single item
        items = value if isinstance(value, list) else [value]
        return all(_accepts(arguments[0] if arguments else Any, item) for item in items)
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    if isinstance(value, (list, dict)):
        return False
    if kind is bool:
        return isinstance(value, bool) or str(value).lower() in ("true", "false", "yes", "no", "1", "0")
    if kind in (int, float):
        if isinstance(value, bool):
            return False
        try:
            kind(value)  # YAML reads 1e-4 (no dot) as a string; argparse would parse it
        except (TypeError, ValueError):
            return False
        return kind is float or float(value) == int(float(value))
    return True  # strings, enums of strings and other scalars: the argument classes validate the value


def _describe(kind: Any) -> str:
    """A field type in words, for error messages."""
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in arguments if a is not type(None)))
    if origin in (list, tuple):
        return f"a list of {_describe(arguments[0]) if arguments else 'values'}"
    if kind is dict or origin is dict:
        return "a mapping"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(argument) for argument in arguments)
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(kind, "a single value")


def check_config_types(values: dict, path: str, argument_classes: tuple[type, ...]) -> dict:
    """Every value of a config file must fit its field's type; one line naming the key, the file and the value.

    Returns the values with a whole float in an integer field (YAML's ``100.0``) as that integer, which
    the field's flag parses; every other value is kept as written.
    """
    kinds = {}
    for cls in argument_classes:
        hints = typing.get_type_hints(cls)
        kinds.update({f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init})
    checked = dict(values)
    for key, value in values.items():
        if key in kinds and value is not None and not _accepts(kinds[key], value):
            raise MMRConfigError(
                f"config file {path}: key {key!r} takes {_describe(kinds[key])}, got {value!r}; fix that line"
            )
        if isinstance(value, float) and not _accepts(kinds.get(key, Any), 0.5):  # a field that takes no fraction
            checked[key] = int(value)
    return checked


def config_to_flags(values: dict) -> list[str]:
    """Turn a config mapping into flags, so that later flags on the command line win (argparse keeps the last)."""
    flags: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        flags.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            flags.extend(str(item) for item in value)
        elif isinstance(value, dict):  # fields such as fsdp_config take a mapping as a JSON string
            flags.append(json.dumps(value))
        else:
            flags.append(str(value))
    return flags
