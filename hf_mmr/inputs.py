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
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Callable
from typing import Any

import datasets
import yaml

from .compat import parser_destinations
from .errors import MMRConfigError, UsageError
from .glue import get_task
from .search import make_mmr_hp_space, require_optuna

logger = logging.getLogger(__name__)

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
        known = parser_destinations(parser)
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


def has_rows(path: str) -> bool:
    """Whether a CSV file has a line after its header, or a JSON file holds any record."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        if path.endswith(".csv"):
            return sum(1 for line in handle if line.strip()) > 1
        return handle.read().strip() not in ("", "[]", "{}")


# A folder holds a tokenizer if it has one of these (save_pretrained writes the first two).
TOKENIZER_FILES = (
    "tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model"
)  # fmt: skip


def check_local_folder(flag: str, source: str, needs: tuple[str, ...]) -> None:
    """A local folder given for a model, config or tokenizer must hold one of the files that loading it reads."""
    if os.path.isdir(source) and not any(os.path.isfile(os.path.join(source, name)) for name in needs):
        raise UsageError(
            f"{flag} {source!r} is a folder without {' or '.join(needs[:2])}; "
            "point it at a folder written by save_pretrained"
        )


def check_folder_to_write(path: str, flag: str) -> None:
    """Fail in one line, before any data is read, unless ``path`` is or can become a folder we may write into."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):  # the nearest part of the path that exists decides
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        where = "is a file" if probe == os.path.abspath(path) else f"lies below {probe!r}, which is a file"
        raise UsageError(f"{flag} {path!r} {where}; name a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r} cannot be written ({probe!r} is not writable); choose another folder")


def check_data_arguments(args: Any) -> None:
    """run_glue_mmr.py's data and search flags: one line naming the flag for a value that cannot work, and every
    data file checked (a folder, a wrong extension, unreadable, not UTF-8, no rows) before anything is loaded."""
    if args.mmr_search_trials < 0:
        raise UsageError(f"--mmr_search_trials must be >= 0, got {args.mmr_search_trials}")
    if args.mmr_search_trials:
        try:
            require_optuna()
        except ImportError as error:
            raise UsageError(f"--mmr_search_trials: {error}") from None
    if not 0 < args.mmr_search_heldout_fraction < 1:
        raise UsageError(f"--mmr_search_heldout_fraction must be in (0, 1), got {args.mmr_search_heldout_fraction}")
    for value in args.mmr_search_detach_radius:
        if value.lower() not in ("false", "true"):
            raise UsageError(f"--mmr_search_detach_radius takes false and/or true, got {value!r}")
    try:
        make_mmr_hp_space((args.mmr_search_lambda_min, args.mmr_search_lambda_max), args.mmr_search_forms, [False])
    except ValueError as error:
        raise UsageError(f"--mmr_search_lambda_min/max or --mmr_search_forms: {error}") from None
    if args.task_name is not None:
        get_task(args.task_name)  # fails with the list of known tasks
    elif args.glue_dir is not None:
        raise UsageError("--glue_dir needs --task_name to know which task folder to read")
    elif args.dataset_name is None and (args.train_file is None or args.validation_file is None):
        raise UsageError("need --task_name, --dataset_name, or both --train_file and --validation_file")
    for flag in ("max_seq_length", "max_train_samples", "max_eval_samples", "max_predict_samples"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be >= 1, got {value}")
    for flag in ("train_file", "validation_file", "test_file"):
        path = getattr(args, flag)
        if path is None:
            continue
        if os.path.isdir(path):
            raise UsageError(f"--{flag} {path!r} is a folder; name a .csv, .json or .jsonl file")
        if path.rsplit(".", 1)[-1] not in ("csv", "json", "jsonl"):
            raise UsageError(f"--{flag} {path!r} must be a .csv, .json or .jsonl file")
        check_input_file(f"--{flag}", path)
        if not has_rows(path):
            raise UsageError(f"--{flag} {path} has no rows")


def first_row(column: list, bad: Callable[[Any], bool]) -> int | None:
    """The 1-based data row of the first value for which ``bad`` holds."""
    return next((row for row, value in enumerate(column, start=1) if bad(value)), None)


def drop_or_refuse_missing_text(
    raw: datasets.DatasetDict, columns: list[str], sources: dict[str, str], drop: bool
) -> datasets.DatasetDict:
    """Stop at the first missing text cell, naming file, row and column; or drop such rows, saying how many."""
    for split, dataset in raw.items():
        for column in columns:
            row = first_row(dataset[column], lambda value: value is None)
            if row is None:
                continue
            if not drop:
                raise UsageError(
                    f"{sources[split]}: row {row} has no text in column {column!r}; fill it in, or pass "
                    "--drop_rows_with_missing_text to drop such rows"
                )
            before = len(raw[split])
            raw[split] = raw[split].filter(lambda example: all(example[c] is not None for c in columns))
            logger.warning(f"Dropped {before - len(raw[split])} rows with missing text from {sources[split]}")
            break
    return raw
