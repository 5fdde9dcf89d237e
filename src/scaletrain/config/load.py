"""Build a validated `Config` from a preset or YAML file plus `section.key=value` overrides.

Config files and override values may come from anywhere (a downloaded run's config.yaml, a script),
so YAML is read with limits: the document's size, its nesting depth, and what its aliases expand to
are capped before anything is built from it, and duplicate keys are refused rather than the last one
silently winning. An error line never shows more than a short, cut excerpt of a value.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scaletrain.config.schema import Config, brief
from scaletrain.models import FAMILIES
from scaletrain.errors import UserError

DEFAULT_PRESET = "gpt"

log = logging.getLogger(__name__)

# Limits on YAML from outside. A real config is a few KB, nests 4 levels and has a few hundred
# values; these leave room for long data.mixture lists (thousands of sources), still refuse an alias
# bomb (10**9 values from a few hundred bytes) in milliseconds, before it is ever expanded, and keep
# the worst file within the limits to about a second of parsing.
MAX_CONFIG_BYTES = 1 << 20  # a config file
MAX_VALUE_BYTES = 64 << 10  # one `section.key=value` override value
MAX_DEPTH = 64  # nested mappings/lists, also counted through aliases
MAX_VALUES = 50_000  # nodes of the document, also once its aliases are expanded
MAX_INT_CHARS = 100  # an integer literal (int64 needs 19 digits; huge ones cost quadratic time)

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A YAML document beyond the limits: never falls back to reading the text as a string."""


class _NotYAML(Exception):
    """Text that is not YAML (a syntax error, a malformed tagged scalar)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `3e-4` as a float (YAML 1.1 wants a dot, `3.0e-4`; users don't),
    caps nesting depth while composing (PyYAML's composer recurses: 20,000 levels would end in a
    RecursionError) and refuses duplicate keys and overlong integers."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels at line {line}")
            if self._nodes > MAX_VALUES:  # pure-Python YAML reads ~40,000 values a second
                line = self.peek_event().start_mark.line + 1
                raise _Refused(f"more than {MAX_VALUES:,} values (at line {line})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key, _ in node.value:  # the written keys, before merge keys (`<<`) add theirs
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise _Refused(f"duplicate key {brief(key.value)} at line {key.start_mark.line + 1}")
                seen.add((key.tag, key.value))
        return node

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_CHARS:
            raise _Refused(f"an integer of {len(node.value)} characters at line {node.start_mark.line + 1}")
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_VALUES nodes or MAX_DEPTH levels, or refer
    to themselves. The composed graph shares each aliased node, so the expanded size is summed per
    distinct node (memoized, iteratively): a billion-laughs document costs a few hundred steps."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_VALUES:
                raise _Refused(f"its aliases expand to more than {MAX_VALUES:,} values")
            if depth[key] > MAX_DEPTH:
                raise _Refused(f"its aliases nest deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in entered:
            raise _Refused(f"an alias refers to its own anchor at line {node.start_mark.line + 1}")
        entered.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node) if id(k) not in size)


def _safe_load(text: str, limit: int) -> Any:
    """The YAML value of `text`; _Refused beyond the limits, _NotYAML for text that is not YAML."""
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise _Refused(f"larger than {limit:,} bytes")
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise _NotYAML(str(exc).splitlines()[0]) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # A constructor fed a malformed tagged scalar (`!!float x`, `!!timestamp x`).
        raise _NotYAML(f"{type(exc).__name__}: {brief(str(exc))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml(text: str, origin: str, *, limit: int = MAX_CONFIG_BYTES) -> Any:
    """YAML from outside, within the limits above; a UserError starting with `origin` if not."""
    try:
        return _safe_load(text, limit)
    except _Refused as exc:
        raise UserError(f"{origin}: {exc}") from None
    except _NotYAML as exc:
        raise UserError(f"{origin}: not valid YAML ({exc})") from None


def read_yaml_file(path: str | Path, origin: str | None = None) -> Any:
    """A YAML file from outside: at most MAX_CONFIG_BYTES of UTF-8 text, parsed within the limits.
    UserError (starting with `origin`, default `config PATH`) for a file that is none of these."""
    origin = origin or f"config {path}"
    try:
        with open(Path(path).expanduser(), "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # never read a huge file whole
    except OSError as exc:  # a directory, no permission
        raise UserError(f"{origin}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{origin}: larger than {MAX_CONFIG_BYTES:,} bytes (a config is a few KB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # a binary file
        raise UserError(f"{origin}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_yaml(text, origin)


def preset_names() -> list[str]:
    folder = resources.files("scaletrain") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str | None) -> tuple[dict, str]:
    """Return the raw mapping and a name for the run (the preset or the file's stem)."""
    source = source or DEFAULT_PRESET
    if source in preset_names():
        text = (resources.files("scaletrain") / "configs" / f"{source}.yaml").read_text()
        raw, name = parse_yaml(text, f"preset {source}"), source
    else:
        try:
            path = Path(source).expanduser()
            is_file = path.is_file()
        except (OSError, ValueError, RuntimeError):  # too long for the OS, a NUL byte, `~nosuchuser`
            path, is_file = Path(source), False
        if not is_file:
            raise UserError(
                f"config {brief(source)}: no such file and not a preset (presets: {', '.join(preset_names())})"
            )
        raw = read_yaml_file(path, f"config {source}")
        name = path.parent.name if path.name == "config.yaml" else path.stem
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError(f"config {source}: the top level must be a mapping of sections")
    raw.setdefault("name", name)
    return raw, name


def apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"override {brief(item)}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {brief(item)}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = parse_value(value, f"override {brief(key)}")


def parse_value(value: str, what: str) -> Any:
    """One command-line value read as YAML (numbers, booleans, lists); what YAML can't read (`*.txt`)
    stays a string. A value beyond the YAML limits (an alias bomb, deep nesting, a duplicate key) is
    a UserError starting with `what` (e.g. `override optim.lr`)."""
    if value == "":
        return None
    try:
        return _safe_load(value, MAX_VALUE_BYTES)
    except _NotYAML:
        return value
    except _Refused as exc:
        raise UserError(f"{what}: {exc}") from None


def _is_field(part: object) -> bool:
    # pydantic adds union members ("literal[False]", "int", a family's name) to the location: not keys.
    return not (isinstance(part, str) and ("[" in part or part.startswith("constrained-")
                                          or part in FAMILIES or part in ("int", "str", "float", "bool")))


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
    shown = brief(got)  # cut: the input may be a huge string or list
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


def validate(raw: dict, *, this_machine: bool = False) -> Config:
    try:
        return Config.model_validate(raw, context={"this_machine": this_machine})
    except ValidationError as exc:
        raise UserError(describe(exc)) from None


def load_config(source: str | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                this_machine: bool = False) -> Config:
    """The validated config. `this_machine=True` where its processes start here (train, verify,
    profile): parallel.nproc must then fit this machine's cores or devices."""
    raw, _ = _read_source(source)
    before = copy.deepcopy(raw)
    model = raw.get("model")
    family = model.get("name", "gpt") if isinstance(model, dict) else None
    for item in overrides:
        apply_override(raw, item)
    _other_family(raw, family, overrides)
    given = [item.partition("=")[0] for item in overrides]
    origin = f"preset {source or DEFAULT_PRESET}" if (source or DEFAULT_PRESET) in preset_names() else f"config {source}"
    # Said once: by the process the user started (under `scaletrain train ... parallel.nproc=N`, the
    # launcher, not its workers; under a user's own torchrun, rank 0).
    once = os.environ.get("RANK", "0") == "0" and not os.environ.get("SCALETRAIN_LAUNCHED")
    for line in adapt_to_overrides(raw, before, given, origin):
        if once:
            log.info("%s", line)
    return validate(raw, this_machine=this_machine)


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def adapt_to_overrides(raw: dict, before: dict, given: list[str], origin: str) -> list[str]:
    """A value of the config file (or a default) that conflicts with a command-line override gives
    way, in `raw`; one line each says what changed. Two overrides that conflict stay an error
    (validation reports it), as does a file's value that conflicts with another of the file's.

    Now: `schedule.warmup_steps` at or beyond an overridden `train.max_steps` shrinks in proportion
    (a preset's 100 of 1,350 steps become 0 of 5)."""
    def overridden(key: str) -> bool:
        return any(g == key or key.startswith(g + ".") for g in given)

    def section(d: dict, name: str) -> dict:
        value = d.get(name)
        return value if isinstance(value, dict) else {}

    lines = []
    train, schedule = section(raw, "train"), section(raw, "schedule")
    steps, warmup = train.get("max_steps", 1000), schedule.get("warmup_steps", 0)
    if (_int(steps) and _int(warmup) and 0 < steps <= warmup and overridden("train.max_steps")
            and not overridden("schedule.warmup_steps")):
        planned = section(before, "train").get("max_steps", 1000)
        shorter = warmup * steps // planned if _int(planned) and planned > warmup else steps // 10
        shorter = min(shorter, steps - 1)
        schedule["warmup_steps"] = shorter
        lines.append(f"schedule.warmup_steps: {warmup} from the {origin} shortened to {shorter} to fit "
                     f"train.max_steps={steps}")
    return lines


def _other_family(raw: dict, family: str | None, overrides) -> None:
    """`model.name=X` on a preset or file of another family: the file's model keys describe its own
    family (`gpt-tiny`'s n_layer, d_model), so X's section starts from X's defaults and the
    `model.*` overrides alone (`scaletrain train model.name=hf model.path=DIR`)."""
    model = raw.get("model")
    if family is None or not isinstance(model, dict) or model.get("name", "gpt") == family:
        return
    scratch: dict = {}
    for item in overrides:
        if item.startswith("model."):
            apply_override(scratch, item)
    raw["model"] = scratch["model"]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
