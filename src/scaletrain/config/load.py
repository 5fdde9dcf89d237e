"""Build a validated `Config` from a preset or YAML file plus `section.key=value` overrides."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scaletrain.config.schema import Config
from scaletrain.errors import UserError

DEFAULT_PRESET = "gpt"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float: YAML 1.1 wants a dot (`3.0e-4`), users don't."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, origin: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise UserError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None


def preset_names() -> list[str]:
    folder = resources.files("scaletrain") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str | None) -> tuple[dict, str]:
    """Return the raw mapping and a name for the run (the preset or the file's stem)."""
    source = source or DEFAULT_PRESET
    if source in preset_names():
        text = (resources.files("scaletrain") / "configs" / f"{source}.yaml").read_text()
        name = source
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(
                f"config {source!r}: no such file and not a preset (presets: {', '.join(preset_names())})"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:  # a binary file, a directory, no permission
            reason = f"not UTF-8 text ({exc.reason} at byte {exc.start})" if isinstance(exc, UnicodeDecodeError) \
                else exc.strerror or type(exc).__name__
            raise UserError(f"config {source!r}: {reason}") from None
        name = path.parent.name if path.name == "config.yaml" else path.stem
    raw = parse_yaml(text, source) or {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections")
    raw.setdefault("name", name)
    return raw, name


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {item!r}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = _parse_value(value, key)


def _parse_value(value: str, key: str) -> Any:
    """A value is read as YAML (numbers, booleans, lists); what YAML can't read (`*.txt`) is a string."""
    if value == "":
        return None
    try:
        return yaml.load(value, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError:
        return value


def _is_field(part: object) -> bool:
    # pydantic adds union members ("literal[False]", "int", "gpt") to the location: not keys.
    return not (isinstance(part, str) and ("[" in part or part.startswith("constrained-")
                                          or part in ("gpt", "mlp", "int", "str", "float", "bool")))


def _loc(err: dict, prefix: str) -> str:
    return ".".join(([prefix] if prefix else []) + [str(p) for p in err["loc"] if _is_field(p)])


def _describe(err: dict, prefix: str = "", alternatives: list[dict] = ()) -> str:
    loc = _loc(err, prefix)
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return msg if ":" in msg.split(" ")[0] else f"{loc}: {msg}" if loc else msg
    shown = repr(got) if not isinstance(got, (dict, list)) or len(repr(got)) < 60 else type(got).__name__
    msgs = [msg.lower()] + [a["msg"].lower() for a in alternatives]
    return f"{loc}: {', or '.join(msgs)} (got {shown})"


def describe(exc: ValidationError, prefix: str = "") -> str:
    """One line for a validation failure: the first problem, naming its key, and how many more."""
    errors = exc.errors(include_url=False)
    first = _loc(errors[0], prefix)
    same = [e for e in errors[1:] if _loc(e, prefix) == first]  # the other members of a union
    rest = len(errors) - 1 - len(same)
    more = f" (and {rest} more)" if rest else ""
    return _describe(errors[0], prefix, same) + more


def validate(raw: dict) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe(exc)) from None


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw, _ = _read_source(source)
    for item in overrides:
        apply_override(raw, item)
    return validate(raw)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
