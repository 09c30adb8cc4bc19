"""Reading YAML config files into pydantic models, with every error's file, line and path.

The SLA file (config.py), the web config (webconfig.py) and ticket events (support/) are read
here: `!env`/`!file` secrets, unknown keys as errors with a "did you mean", aliases bounded, and
pydantic's errors reworded and located on the line the user wrote.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from .values import AWARE, quote_hint, show

# --------------------------------------------------------------------------------------------
# Errors


@dataclass(frozen=True, order=True)
class ConfigError:
    """One problem in the config file, located by line and dotted path."""

    file: str
    line: int  # 1-based; 0 when the problem is the file itself (unreadable)
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        path = f"{self.path}: " if self.path else ""
        return f"{where}  {path}{self.message}"


class ConfigInvalid(Exception):
    """The config file has one or more errors; `str()` lists them all."""

    def __init__(self, file: str, errors: Iterable[ConfigError]) -> None:
        self.file = file
        self.errors = sorted(set(errors), key=lambda e: (e.line, e.path, e.message))
        count = len(self.errors)
        lines = [f"{file}: {count} error{'s' if count != 1 else ''}"]
        lines += [f"  {e}" for e in self.errors]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------------
# YAML with line numbers


Path_ = tuple[str | int, ...]

_YAML_TAG = "tag:yaml.org,2002:"
# Aliases can multiply a small file ("billion laughs"). Reading stops past this many values, or
# past _MAX_EXPANSION times the values the file itself holds, whichever is more: a file of
# 100,000 services (sharded, docs/SCALING.md) reads, a few lines of aliases do not.
_MAX_NODES = 100_000
_MAX_EXPANSION = 10
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_KINDS = {_YAML_TAG + "timestamp": "a date", _YAML_TAG + "int": "a number"}


def _tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


class Reader:
    """Builds plain data from a YAML node tree, recording the line of every path on the way."""

    def __init__(self, file: str, base_dir: Path) -> None:
        self.file = file
        self.base_dir = base_dir
        self.lines: dict[Path_, int] = {}
        self.errors: list[ConfigError] = []
        # Paths already reported while reading; the models' errors at or below them are noise.
        self.failed: set[Path_] = set()
        self._constructor = yaml.SafeLoader("")
        self._open: set[int] = set()  # ids of the nodes being read, to catch recursive aliases
        self._count = 0
        self.limit = _MAX_NODES

    def error(self, path: Path_, line: int, message: str) -> None:
        self.failed.add(path)
        self.errors.append(ConfigError(self.file, line, dotted(path), message))

    def reported(self, path: Path_) -> bool:
        """Whether an error at `path` or above it was already reported while reading."""
        return any(path[:end] in self.failed for end in range(len(path) + 1))

    def read(self, node: yaml.Node, path: Path_ = ()) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._count += 1
        if self._count > self.limit:
            if self._count == self.limit + 1:
                self.error(path, line, f"too many values (over {self.limit}); check the aliases")
            return None
        if id(node) in self._open:
            self.error(path, line, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            return self._read(node, path, line)
        finally:
            self._open.discard(id(node))

    def _read(self, node: yaml.Node, path: Path_, line: int) -> Any:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            default = _YAML_TAG + ("map" if isinstance(node, yaml.MappingNode) else "seq")
            if node.tag != default:
                self._bad_tag(node, path, line)
                return None
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*path, i)) for i, item in enumerate(node.value)]
        if node.tag == "!env":
            return self._env(str(node.value), path, line)
        if node.tag == "!file":
            return self._file(str(node.value), path, line)
        if node.tag not in yaml.SafeLoader.yaml_constructors:
            self._bad_tag(node, path, line)
            return None
        try:
            return self._constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            value, kind = show(node.value), _KINDS.get(node.tag, _tag(node.tag))
            self.error(path, line, f"cannot read {value} as {kind}: {problem}")
            return None

    def _mapping(self, node: yaml.MappingNode, path: Path_) -> dict[str, Any]:
        # Keys written in this mapping, as opposed to keys merged in from `<<: *anchor`, which
        # they may override (that is what merge keys are for).
        written = {id(k) for k, _ in node.value if k.tag != _YAML_TAG + "merge"}
        try:
            self._constructor.flatten_mapping(node)  # merge keys (<<: *anchor)
        except yaml.YAMLError as err:
            self.error(path, node.start_mark.line + 1, f"invalid merge key: {err}")
            return {}
        out: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or not key_node.tag.startswith(_YAML_TAG):
                self.error(path, key_line, "keys must be plain names, not lists, mappings or tags")
                continue
            # The key as written: `404:` is the name "404" and `off:` the name "off".
            key = str(key_node.value)
            if id(key_node) in written:
                if key in seen:
                    message = f'duplicate key "{key}" (first on line {seen[key]})'
                    self.error((*path, key), key_line, message)
                seen[key] = key_line
            self.lines[(*path, key)] = key_line
            out[key] = self.read(value_node, (*path, key))
        return out

    def _bad_tag(self, node: yaml.Node, path: Path_, line: int) -> None:
        if node.tag in ("!env", "!file"):
            usage = "!env NAME" if node.tag == "!env" else "!file PATH"
            self.error(path, line, f"{node.tag} takes one plain value, like {usage}")
        else:
            self.error(path, line, f"unknown tag {_tag(node.tag)}; use !env NAME or !file PATH")

    def _env(self, name: str, path: Path_, line: int) -> SecretStr | None:
        if not _ENV_NAME.match(name):
            self.error(path, line, f"!env needs an environment variable name, got {show(name)}")
            return None
        value = os.environ.get(name)
        if value is None:
            self.error(path, line, f"environment variable {name} is not set")
            return None
        if value == "":
            self.error(path, line, f"environment variable {name} is empty")
            return None
        return SecretStr(value)

    def _file(self, name: str, path: Path_, line: int) -> SecretStr | None:
        if not name:
            self.error(path, line, "!file needs a file path, like !file /run/secrets/token")
            return None
        try:
            # Relative paths are relative to the config file, so the config can move with them.
            text = Path(self.base_dir, name).read_text(encoding="utf-8")
        except OSError as err:
            self.error(path, line, f'cannot read secret file "{name}": {err.strerror or err}')
            return None
        except UnicodeDecodeError:
            self.error(path, line, f'secret file "{name}" is not UTF-8 text')
            return None
        # Editors and `echo` add a final newline that is never part of the secret.
        text = text.rstrip("\r\n")
        if not text:
            self.error(path, line, f'secret file "{name}" is empty')
            return None
        return SecretStr(text)

    def line_of(self, path: Path_) -> int:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def dotted(path: Iterable[str | int]) -> str:
    """A path as users read it: `services.app.http.steps[1].url`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # Keys the user made up (service and header names) may hold any character; quote those.
        name = part if _PLAIN_KEY.match(part) else show(part)
        out += f".{name}" if out else name
    return out


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


# --------------------------------------------------------------------------------------------
# Pydantic errors in our words


# What a model says where a secret is not allowed; a model may say where secrets are allowed.
_NO_SECRET = "cannot be a secret (!env or !file)"

_MESSAGES = {
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "timezone_aware": AWARE,
    "datetime_type": AWARE,
    "datetime_parsing": AWARE,
    "datetime_from_date_parsing": AWARE,
}


def _strip(annotation: Any) -> Any:
    """The annotation without Annotated, Optional, or a union's non-model members."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            annotation = (models or args)[0]
        else:
            return annotation


def _model_at(root: type[BaseModel], path: Path_) -> type[BaseModel] | None:
    """The model that parses the mapping at `path`, for listing its allowed keys."""
    annotation: Any = root
    for part in path:
        annotation = _strip(annotation)
        origin = typing.get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next(
                (f for n, f in annotation.model_fields.items() if (f.alias or n) == part), None
            )
            if field is None:
                return None
            annotation = field.annotation
        elif origin is list and isinstance(part, int):
            annotation = typing.get_args(annotation)[0]
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return None
    annotation = _strip(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _unknown_key(root: type[BaseModel], path: Path_) -> str:
    key = str(path[-1])
    model = _model_at(root, path[:-1])
    if model is None:
        return f'unknown key "{key}"'
    close = difflib.get_close_matches(key, _keys(model), n=1, cutoff=0.6)
    if close:
        return f'unknown key "{key}"; did you mean "{close[0]}"?'
    return f'unknown key "{key}"; allowed: {", ".join(_keys(model))}'


def _message(root: type[BaseModel], err: Mapping[str, Any], path: Path_) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(root, path)
    if kind == "missing":
        return "required key is missing"
    if isinstance(value, SecretStr) and kind.endswith("_type"):
        allowed = getattr(root, "SECRETS_ALLOWED_IN", None)
        return f"{_NO_SECRET}; secrets are allowed in {allowed}" if allowed else _NO_SECRET
    if not path and kind == "model_type":
        keys = [f.alias or n for n, f in root.model_fields.items() if f.is_required()]
        with_keys = f" with the keys {' and '.join(keys)}" if keys else ""
        return f"the file must be a mapping{with_keys}, got {show(value)}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace("'", '"')
        return f"must be {expected}, got {show(value)}"
    if kind in ("too_short", "too_long", "string_too_short"):
        if kind == "string_too_short" or ctx.get("min_length") == 1:
            return "must not be empty"
        if kind == "too_short":
            return f"must have at least {ctx['min_length']} items"
        return f"must have at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {show(value)}"
    if kind in _MESSAGES:
        hint = quote_hint(value) if kind == "string_type" else ""
        return f"{_MESSAGES[kind]}, got {show(value)}{hint}"
    # Our own PydanticCustomErrors, and anything pydantic says that we have not reworded.
    return str(err["msg"]).removeprefix("Value error, ")


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "SecretStr", "datetime", "dict", "list"}


def _clean_loc(loc: Iterable[Any], data: Any) -> Path_:
    """The path the user wrote, from a pydantic location.

    Pydantic adds validator and union member names to locations (`function-after[...]`,
    `[key]`, `str`); walking the data alongside tells them from keys the user wrote.
    """
    out: list[str | int] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if (isinstance(node, dict) and part in node) or in_list:
            node = node[part]
        elif isinstance(part, str) and ("[" in part or "-" in part or part in _TYPE_TAGS):
            continue
        else:
            node = None  # a key the user left out (missing) or did not write
        out.append(part)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Entry points


M = typing.TypeVar("M", bound=BaseModel)


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    problem = err.problem or "cannot parse"
    if problem.startswith("but "):  # "expected X" is the context, "but found Y" the problem
        return f"{err.context}, {problem}"
    if err.context:
        problem += f" {err.context}"
    if "block" in problem:
        problem += " (check the indentation)"
    return problem


def _located(model: type[BaseModel], detail: Any, data: Any) -> tuple[Path_, str]:
    """Where a pydantic error is in the data the user wrote, and its message in our words."""
    path = _clean_loc(detail["loc"], data)
    field = (detail.get("ctx") or {}).get("field")
    if field:
        path = (*path, field)
    return path, _message(model, detail, path)


def explain(model: type[BaseModel], exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    """The errors of validating `data` into `model` as (dotted path, message), in the words
    the SLA file's errors use; for other input checked with the same models (ticket events)."""
    return [
        (dotted(path), message)
        for path, message in (_located(model, detail, data) for detail in exc.errors())
    ]


def parse_model(
    text: str,
    file: str,
    model: type[M],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    prepare: Callable[[Reader, Any], Any] | None = None,
    sections: frozenset[str] | None = None,
) -> M:
    """Parse YAML text into `model` the way the SLA file is read; raise ConfigInvalid.

    The same reader serves other YAML files (the web config): `!env`/`!file` secrets, unknown
    keys as errors, every error with its line. `file` names the file in messages; relative
    paths (`!file`, `ExistingFile` fields) are relative to `base_dir`, by default the
    directory of `file`.
    """
    if base_dir is None:
        base_dir = "." if file.startswith("<") else (os.path.dirname(file) or ".")
    reader = Reader(file, Path(base_dir))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        error = ConfigError(file, line, "", f"invalid YAML: {_yaml_problem(err)}")
        raise ConfigInvalid(file, [error]) from None
    except yaml.YAMLError as err:
        raise ConfigInvalid(file, [ConfigError(file, 1, "", f"invalid YAML: {err}")]) from None
    if node is None:
        raise ConfigInvalid(file, [ConfigError(file, 1, "", "the file is empty")])
    reader.limit = max(_MAX_NODES, _MAX_EXPANSION * _distinct_nodes(node))
    data = reader.read(node)
    if prepare is not None:
        data = prepare(reader, data)
    if sections is not None:
        # Only these sections are read: a secret the rest of the file names need not be at hand.
        reader.errors = [e for e in reader.errors if not e.path or e.path.split(".")[0] in sections]
    result = None
    try:
        result = model.model_validate(data, context={"base_dir": reader.base_dir})
    except ValidationError as exc:
        for detail in exc.errors():
            path, message = _located(model, detail, data)
            if reader.reported(path):
                continue
            reader.errors.append(ConfigError(file, reader.line_of(path), dotted(path), message))
    if reader.errors or result is None:
        raise ConfigInvalid(file, reader.errors)
    return result


def load_model(
    path: str | os.PathLike[str],
    model: type[M],
    *,
    prepare: Callable[[Reader, Any], Any] | None = None,
    sections: frozenset[str] | None = None,
) -> M:
    """Read the YAML file at `path` into `model`; raise ConfigInvalid listing every error."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as err:
        message = f"cannot read the file: {err.strerror or err}"
        raise ConfigInvalid(name, [ConfigError(name, 0, "", message)]) from None
    except UnicodeDecodeError as err:
        message = f"the file is not UTF-8 text ({err.reason} at byte {err.start})"
        raise ConfigInvalid(name, [ConfigError(name, 0, "", message)]) from None
    return parse_model(text, name, model, prepare=prepare, sections=sections)


def _distinct_nodes(root: yaml.Node) -> int:
    """How many values the file itself holds: its nodes, each alias target counted once."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(value for _, value in node.value)
    return len(seen)
