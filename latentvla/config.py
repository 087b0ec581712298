"""Typed configs and the CLI generated from them.

Every command's options are a dataclass whose fields carry a default and a one-line help:

    @dataclass
    class StatsConfig:
        data_root_dir: str = arg("", "Directory holding <name>/<version>/ TFDS builder dirs.")
        max_steps: int | None = arg(None, "Stop after this many optimizer steps.")

`parse_config(StatsConfig, argv)` builds an argparse parser from the fields (flags keep the
field names: `--data_root_dir`), parses, and returns the dataclass. Supported field types:
str, int, float, bool (`--flag`, `--flag True`, `--flag false`), Optional[...] (`None` accepted),
Literal[...] (choices), Path, and list[str|int|float] (a JSON list or comma-separated values).
Every command also accepts `--config FILE.yaml|json` whose keys set defaults (flags still win).

This module must not import torch: `latentvla --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from latentvla.errors import LatentVLAError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def arg(default: Any = _MISSING, help: str = "", *, positional: bool = False, aliases: Sequence[str] = ()) -> Any:
    """A dataclass field with a default and a one-line help.

    Mutable defaults (lists, dicts) are copied per instance. `positional=True` makes the field a
    positional CLI argument (e.g. OUT_DIR). `aliases` are extra flag spellings.
    """
    meta = {"help": help, "positional": positional, "aliases": tuple(aliases)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- value parsing

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar_parser(tp: Any):
    if tp is bool:
        return parse_bool
    if tp in (int, float, str):
        def conv(text: str, tp=tp):
            try:
                return tp(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from None
        conv.__name__ = tp.__name__
        return conv
    if tp is Path:
        return Path
    if get_origin(tp) is Literal:
        choices = get_args(tp)

        def lit(text: str):
            for c in choices:
                if str(c) == text or (isinstance(c, bool) and parse_bool_safe(text) is c):
                    return c
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, choices))}; got {text!r}")

        lit.__name__ = "choice"
        return lit
    raise TypeError(f"unsupported config field type {tp!r}")


def parse_bool_safe(text: str) -> bool | None:
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        return None


def _list_parser(elem_tp: Any):
    conv = _scalar_parser(elem_tp)

    def parse_list(text: str):
        text = text.strip()
        if text.startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise argparse.ArgumentTypeError(f"invalid JSON list {text!r}: {e}") from None
            if not isinstance(items, list):
                raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
            return [conv(x if isinstance(x, str) else json.dumps(x)) for x in items]
        if not text:
            return []
        return [conv(part.strip()) for part in text.split(",")]

    parse_list.__name__ = "list"
    return parse_list


def value_parser(tp: Any):
    """The function turning one CLI string into a value of field type `tp` (Optional aware)."""
    inner, optional = _unwrap_optional(tp)
    if get_origin(inner) in (list, tuple, typing.Sequence):
        (elem,) = get_args(inner)[:1] or (str,)
        base = _list_parser(elem)
    else:
        base = _scalar_parser(inner)
    if not optional:
        return base

    def opt(text: str):
        if isinstance(text, str) and text.strip().lower() in ("none", "null"):
            return None
        return base(text)

    opt.__name__ = getattr(base, "__name__", "value")
    return opt


def _metavar(tp: Any) -> str:
    inner, _ = _unwrap_optional(tp)
    if get_origin(inner) is Literal:
        return "{" + ",".join(map(str, get_args(inner))) + "}"
    if inner is bool:
        return "{True,False}"
    if get_origin(inner) in (list, tuple):
        return "LIST"
    return getattr(inner, "__name__", "VALUE").upper()


# ----------------------------------------------------------------------------- parser

def _fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    doc = description if description is not None else (cls.__doc__ or "").strip()
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--config", type=Path, default=None, help="YAML/JSON file whose keys set option "
                                                                  "defaults (flags win).")
    for f, tp in _fields(cls):
        meta = f.metadata or {}
        help_text = meta.get("help", "") or " "
        default = _default_of(f)
        if meta.get("positional"):
            kwargs: dict[str, Any] = {"type": value_parser(tp), "help": help_text, "metavar": f.name.upper()}
            if default is not _MISSING:
                kwargs.update(nargs="?", default=default)
            parser.add_argument(f.name, **kwargs)
            continue
        kwargs = {"dest": f.name, "type": value_parser(tp), "help": help_text, "metavar": _metavar(tp),
                  **({"required": True} if default is _MISSING else {"default": default})}
        if _unwrap_optional(tp)[0] is bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{f.name}", *meta.get("aliases", ()), **kwargs)
    return parser


def _load_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise LatentVLAError(f"--config {path}: file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # malformed YAML/JSON; YAML errors span lines, the CLI prints one
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(e, "problem", None) or " ".join(str(e).split())
        raise LatentVLAError(f"--config {path}: cannot parse{where} ({reason})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LatentVLAError(f"--config {path}: expected a mapping of option names to values")
    return data


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a mapping, converting strings and checking names and types."""
    known = {f.name: tp for f, tp in _fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise LatentVLAError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        tp = known[name]
        if isinstance(value, str) or (_unwrap_optional(tp)[0] is bool and not isinstance(value, bool)):
            try:
                value = value_parser(tp)(value if isinstance(value, str) else str(value))
            except argparse.ArgumentTypeError as e:
                raise LatentVLAError(f"{source}: option {name}: {e}") from None
        kwargs[name] = value
    return cls(**kwargs)


def parse_config(cls: type[T], argv: Sequence[str] | None = None, prog: str | None = None,
                 description: str | None = None) -> T:
    """Parse `argv` into an instance of the dataclass `cls` (see module doc)."""
    parser = build_parser(cls, prog=prog, description=description)
    ns = parser.parse_args(argv)
    values = vars(ns)
    cfg_path = values.pop("config")
    if cfg_path is not None:
        file_values = _load_config_file(cfg_path)
        base = config_from_dict(cls, file_values, source=str(cfg_path))
        # Flags given explicitly win over file values: re-parse with the file values as defaults.
        parser.set_defaults(**{k: getattr(base, k) for k in file_values})
        values = vars(parser.parse_args(argv))
        values.pop("config")
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def check_min(cfg: Any, names: Sequence[str], minimum: int = 1, prefix: str = "--") -> None:
    """Each named field of `cfg` that is set (not None) must be >= `minimum` (the error says `<prefix><name>`)."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < minimum:
            raise LatentVLAError(f"{prefix}{name} must be >= {minimum}, got {value}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON/YAML-able dict of a config (Paths become strings)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, Path):
            v = str(v)
        elif dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        out[f.name] = v
    return out
