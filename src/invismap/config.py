"""Typed configs: frozen dataclasses loaded from YAML, with ``key.sub=value`` overrides.

Unknown keys and values of the wrong type are rejected with the key's dotted name and what is allowed, so
a typo in a YAML file never silently falls back to a default.

Example:
    >>> cfg = load_config(DistillConfig, "configs/distill.yaml", ["train.max_steps=100"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from invismap.errors import InvismapError, file_error

T = TypeVar("T")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise InvismapError(f"{where or 'config'}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise InvismapError(f"unknown config key '{key}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for k, v in data.items():
        default = _field_default(fields[k])
        if dataclasses.is_dataclass(default) and isinstance(v, dict):
            # A partial section overrides the field's own default (e.g. a stage's TrainConfig), not the
            # section class's generic defaults.
            v = {**to_dict(default), **v}
        kwargs[k] = _coerce(hints[k], v, f"{where}.{k}" if where else k)
    return cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except InvismapError as e:
                errors.append(str(e))
        raise InvismapError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InvismapError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise InvismapError(f"config key '{key}': expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise InvismapError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, key) for a, v in zip(args, value))
        item = args[0] if args else Any
        seq = [_coerce(item, v, key) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise InvismapError(f"config key '{key}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise InvismapError(f"config key '{key}': expected {tp.__name__}, got {value!r}")
    return value


def added_key(default: Any) -> Any:
    """A dataclass field for a key added after runs were made, whose ``default`` computes what they computed.

    ``to_dict(cfg, skip_added_defaults=True)`` leaves it out while it holds that default, so a pipeline stage
    hashed before the key existed stays up to date (:mod:`invismap.pipeline.runner`); set to anything else,
    it is hashed like every key. Only for defaults that reproduce earlier results exactly; the default is
    immutable (a number, string, tuple or None), as a dataclass field's plain default must be.
    """
    return dataclasses.field(default=default, metadata={"added": True})


def to_dict(cfg: Any, skip_added_defaults: bool = False) -> dict:
    """A config dataclass as plain YAML-able data (without :func:`added_key` fields at their defaults if
    ``skip_added_defaults``)."""
    def kept(v, f: dataclasses.Field) -> bool:  # a list equal to a tuple default counts as the default
        added = skip_added_defaults and f.metadata.get("added")
        return not (added and plain(getattr(v, f.name)) == plain(f.default))

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if kept(v, f)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise InvismapError(f"override '{item}' must look like key.sub=value")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise InvismapError(f"override '{item}': '{p}' is not a section")
        node[parts[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise file_error(path, "config file not found") from None
    except IsADirectoryError:
        raise file_error(path, "is a folder, not a config file", "pass a YAML file") from None
    except UnicodeDecodeError:
        raise file_error(path, "config is not UTF-8 text", "pass a YAML file") from None
    except OSError as e:
        raise file_error(path, f"cannot read the config: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise file_error(path, f"not valid YAML{at}") from None
    if not isinstance(data, dict):
        raise file_error(path, "config must be a mapping of keys")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls`` <- YAML file <- ``key=value`` overrides, all type-checked."""
    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except InvismapError as e:
        raise InvismapError(f"{path}: {e}" if path else str(e)) from None


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
