"""From YAML and `key.path=value` overrides to a validated `Config`, and back to YAML.

Errors name the file or override and the dotted field, so that a typo such as `adapter.rank` is a one-line
message, not a pydantic traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .schema import Config


def _format_validation_error(err: ValidationError, origin: str, prefix: str = "") -> str:
    lines = [f"invalid config ({origin}):"]
    for e in err.errors():
        field = prefix + ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        if "input" in e and e["type"] not in ("missing",) and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)


# ---- dotted keys -------------------------------------------------------------------------------------------

def get_dotted(raw: dict, key: str, default: Any = None) -> Any:
    """raw['adapter']['r'] for 'adapter.r'; `default` where a part is missing."""
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(raw: dict, key: str, value: Any, origin: str | None = None) -> None:
    """raw['adapter']['r'] = value for 'adapter.r', creating missing (or null) sections on the way."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{origin or key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[list[str], Any]:
    """'adapter.r=4' -> (['adapter', 'r'], 4); the value is read as YAML, so lists and null work."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value, e.g. adapter.r=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        set_dotted(raw, ".".join(path), value, origin=f"override {item!r}")
    return raw


# ---- files -------------------------------------------------------------------------------------------------

def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(raw).__name__}")
    return raw


def build_config(raw: dict, origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None


def override_section(section: BaseModel, updates: dict, name: str, origin: str = "overrides") -> BaseModel:
    """A copy of one config section (`name`: 'data', say) with `updates` applied, validated as a config file is:
    unknown fields and wrong types are ConfigErrors naming `name.field` (model_copy would take them unchecked)."""
    try:
        return type(section).model_validate({**section.model_dump(), **updates})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin, prefix=f"{name}.")) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The config of a run: defaults, then the YAML file, then `key.path=value` overrides, then validation."""
    raw = read_yaml(path) if path else {}
    raw = apply_overrides(raw, overrides or [])
    origin = f"{path}" if path else "defaults"
    if overrides:
        origin += " + overrides"
    return build_config(raw, origin)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every field: the config's documentation, generated from the code."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_fields(annotation, f"{prefix}{name}."))
            continue
        default = field.default if field.default_factory is None else field.default_factory()
        rows.append((f"{prefix}{name}", repr(default), field.description or ""))
    return rows
