"""Journey files (YAML) in, :class:`JourneySpec` out, with every problem located.

A marketer who saves a broken journey should see all that is wrong at once,
each problem with its file, line and field, in words they can act on. So the
loader never stops at the first problem:

1. the YAML is *composed* (never constructed) with a safe loader, which keeps
   the line of every node;
2. the node tree is walked into plain data while recording, for every mapping
   key and list item, the path to it and its line; duplicate keys, unsupported
   tags and oversized documents are found here;
3. the data is validated by the pydantic models, whose errors are translated
   into plain words and placed on lines through that map;
4. if the shape is right, :func:`~touchline.journeys.spec.semantic_problems`
   checks step ids, goto targets, splits and conditions, placed the same way.

Scalars follow the YAML 1.2 core schema, as editors do: ``10:00`` is text (not
YAML 1.1's sexagesimal 600), ``no``/``on`` are text (not booleans), and there
are no implicit dates. Only ``true``/``false``, ``null``/``~``, decimal, octal
(``0o``) and hex (``0x``) integers and floats are read as non-text.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import time, timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from touchline.errors import SpecError, SpecProblem
from touchline.journeys.durations import format_duration
from touchline.journeys.spec import JourneySpec, semantic_problems

__all__ = [
    "DOCUMENT_FIELD",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "LoadedJourney",
    "journey_files",
    "load_journey_data",
    "load_journey_dir",
    "load_journey_file",
    "load_journey_text",
    "spec_checksum",
    "spec_to_data",
]

MAX_DOCUMENT_BYTES = 256 * 1024
"""Largest journey file read; the biggest real journeys are a few kilobytes."""

MAX_NODES = 20_000
"""Most YAML nodes one file may expand to, counting every alias use again.

A 200-step journey is about 5,000 nodes; the limit stops alias "billion laughs"
documents, which are tiny as text but expand exponentially when walked.
"""

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists; journeys need about eight levels."""

DOCUMENT_FIELD = "(document)"
"""The ``field`` of problems about the file as a whole (syntax, size, empty)."""

YAML_SUFFIXES = (".yaml", ".yml")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedJourney:
    """One journey file of a folder: where it is, what it says, and its text."""

    path: str
    spec: JourneySpec
    source: str


# --------------------------------------------------------------------- YAML


class _TooBig(Exception):
    """A size, node or depth limit was passed while composing or walking; reading stops."""


class _Loader(yaml.SafeLoader):
    """A safe loader whose implicit scalar types are YAML 1.2 core, not YAML 1.1.

    It also refuses nesting deeper than MAX_DEPTH while composing, because
    PyYAML's composer recurses once per level and would otherwise hit Python's
    recursion limit on a small file of brackets.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooBig(f"the file is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_TAG = "tag:yaml.org,2002:"
for _tag, _regexp, _first in (
    ("null", _NULL, ["~", "n", "N", ""]),
    ("bool", _BOOL, list("tTfF")),
    ("int", _INT, list("-+0123456789")),
    ("float", _FLOAT, list("-+0123456789.")),
):
    _Loader.add_implicit_resolver(_TAG + _tag, _regexp, _first)


def _scalar(node: yaml.ScalarNode) -> Any:
    """The value of a scalar node under the YAML 1.2 core schema; ValueError if it has none."""
    tag, text = node.tag, node.value
    if tag == _TAG + "str":
        return text
    if tag == _TAG + "null" and _NULL.match(text):
        return None
    if tag == _TAG + "bool" and _BOOL.match(text):
        return text.lower() == "true"
    if tag == _TAG + "int" and _INT.match(text):
        if text.startswith("0o"):
            return int(text[2:], 8)
        return int(text, 16) if text.startswith("0x") else int(text)
    if tag == _TAG + "float" and _FLOAT.match(text):
        if text[-1] in "fFnN":  # .inf / .nan: not JSON, and no journey needs them
            raise ValueError(f"{text!r} is not allowed; write an ordinary number")
        return float(text)
    if tag.startswith(_TAG) and tag[len(_TAG) :] in ("null", "bool", "int", "float"):
        raise ValueError(f"{text!r} is not a valid !!{tag[len(_TAG) :]}")
    raise ValueError(f"the YAML tag {tag!r} is not supported")


class _Walk:
    """Turns a composed node tree into plain data, recording lines and problems."""

    def __init__(self) -> None:
        self.lines: dict[Path_, int] = {}
        self.problems: list[tuple[Path_, int, str]] = []
        self.nodes = 0

    def value(self, node: yaml.Node, path: Path_, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _TooBig(f"the file expands to more than {MAX_NODES} YAML values (check aliases)")
        if depth > MAX_DEPTH:
            raise _TooBig(f"the file is nested more than {MAX_DEPTH} levels deep")
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            try:
                return _scalar(node)
            except ValueError as exc:
                self.problems.append((path, line, str(exc)))
                return node.value
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _TAG + "seq":
                self.problems.append((path, line, f"the YAML tag {node.tag!r} is not supported"))
            items = []
            for index, item in enumerate(node.value):
                self.lines[(*path, index)] = item.start_mark.line + 1
                items.append(self.value(item, (*path, index), depth + 1))
            return items
        assert isinstance(node, yaml.MappingNode)
        if node.tag != _TAG + "map":
            self.problems.append((path, line, f"the YAML tag {node.tag!r} is not supported"))
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    (path, key_line, "a key must be plain text, not a list or mapping")
                )
                continue
            key = key_node.value
            if key == "<<":
                self.problems.append(
                    (
                        (*path, key),
                        key_line,
                        "YAML merge keys (<<) are not supported; write the fields out",
                    )
                )
                continue
            if key in first_line:
                self.problems.append(
                    (
                        (*path, key),
                        key_line,
                        f"duplicate key {key!r} (first on line {first_line[key]})",
                    )
                )
                continue
            first_line[key] = key_line
            self.lines[(*path, key)] = key_line
            out[key] = self.value(value_node, (*path, key), depth + 1)
        return out


def _compose(text: str) -> yaml.Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def read_yaml(text: str, *, file: str) -> tuple[Any, dict[Path_, int], list[SpecProblem]]:
    """YAML text → (data, line map, problems). Problems that stop reading raise SpecError."""

    def fatal(line: int | None, message: str) -> SpecError:
        return SpecError([SpecProblem(file, line, DOCUMENT_FIELD, message)])

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise fatal(None, _too_large(size))
    try:
        root = _compose(text)
    except _TooBig as exc:
        raise fatal(None, str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and exc.context_mark is not None:
            message = f"{message} ({exc.context} on line {exc.context_mark.line + 1})"
        raise fatal(mark.line + 1 if mark else None, f"YAML syntax error: {message}") from None
    except yaml.reader.ReaderError as exc:  # a control character, e.g. NUL
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise fatal(line, f"YAML syntax error: {exc.reason} ({char!r})") from None
    except yaml.YAMLError as exc:
        raise fatal(None, f"YAML syntax error: {exc}") from None
    if root is None:
        raise fatal(1, "the file is empty; a journey needs at least journey:, trigger: and steps:")
    walk = _Walk()
    try:
        data = walk.value(root, ())
    except _TooBig as exc:
        raise fatal(None, str(exc)) from None
    walk.lines[()] = root.start_mark.line + 1
    problems = [SpecProblem(file, line, _field(path), msg) for path, line, msg in walk.problems]
    return data, walk.lines, problems


def _too_large(size: int) -> str:
    kb = -(-size // 1024)  # rounded up, so 256 KB and a byte reads "257 KB"
    return f"the file is {kb} KB; the limit is {MAX_DOCUMENT_BYTES // 1024} KB"


def load_journey_data(text: str, *, file: str) -> Any:
    """The YAML document as plain JSON-like data, read with the journey loader's rules.

    Scalars follow the YAML 1.2 core schema (see the module docstring). Raises
    :class:`SpecError` for syntax errors, duplicate keys, unsupported tags and
    documents over the size, node or depth limits. Nothing is validated
    against the journey format; use :func:`load_journey_text` for that.
    """
    data, _lines, problems = read_yaml(text, file=file)
    if problems:
        raise SpecError(sorted_problems(problems))
    return data


# --------------------------------------------------------------- validation


def load_journey_text(text: str, *, file: str) -> JourneySpec:
    """Parse and validate one journey document.

    ``file`` is only used to label problems. Raises :class:`SpecError` listing
    every problem found, each with the 1-based line of the offending field (or
    of its nearest parent that exists) and a dotted ``field`` path such as
    ``steps[2].wait_for.timeout`` (list indices count from 0). Cross-field
    checks (step ids, targets, splits, conditions) run once the shape is valid,
    so a file with shape errors may reveal more problems after they are fixed.
    """
    spec, _lines = _load(text, file=file)
    return spec


def _load(text: str, *, file: str) -> tuple[JourneySpec, dict[Path_, int]]:
    data, lines, problems = read_yaml(text, file=file)
    if not isinstance(data, dict):
        problems.append(
            SpecProblem(
                file,
                lines[()],
                DOCUMENT_FIELD,
                "a journey file must be a mapping of fields (journey:, trigger:, steps:, ...)",
            )
        )
        raise SpecError(sorted_problems(problems))
    try:
        spec = JourneySpec.model_validate(data)
    except ValidationError as exc:
        # A value the walk refused (bad tag, .nan) also fails validation; say it once.
        reported = {p.field for p in problems}
        for path, message in _translate(exc, data):
            if _field(path) not in reported:
                problems.append(SpecProblem(file, line_of(lines, path), _field(path), message))
        raise SpecError(sorted_problems(problems)) from None
    for loc, message in semantic_problems(spec):
        problems.append(SpecProblem(file, line_of(lines, loc), _field(loc), message))
    if problems:
        raise SpecError(sorted_problems(problems))
    return spec, lines


def _translate(exc: ValidationError, data: Any) -> list[tuple[Path_, str]]:
    """Pydantic errors as (path into the document, plain message), union noise merged."""
    merged: dict[Path_, list[str]] = {}
    for error in exc.errors(include_url=False):
        path = _document_path(tuple(error["loc"]), data, missing=error["type"] == "missing")
        message = _message(error, path)
        messages = merged.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    out: list[tuple[Path_, str]] = []
    for path, messages in merged.items():
        musts = [m for m in messages if m.startswith("must be ")]
        others = [m for m in messages if not m.startswith("must be ")]
        if len(musts) > 1:
            others.append("must be " + " or ".join(m[len("must be ") :] for m in musts))
        else:
            others.extend(musts)
        out.extend((path, m) for m in others)
    return out


def _document_path(loc: Path_, data: Any, *, missing: bool) -> Path_:
    """The part of a pydantic ``loc`` that exists in the document.

    Pydantic appends the member name when a value fails every member of a union
    (``exit`` → ``('exit', 'str')``); those segments are not in the document, so
    the path stops before them. A missing field's own name is kept.
    """
    current, kept = data, []
    for position, part in enumerate(loc):
        in_mapping = isinstance(current, dict) and isinstance(part, str) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_mapping or in_list:
            current = current[part]
        else:
            if missing and position == len(loc) - 1 and isinstance(current, dict):
                kept.append(part)
            break
        kept.append(part)
    return tuple(kept)


_TYPE_WORDS = {
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "dict_type": "must be a mapping of names to values (name: value)",
    "model_type": "must be a mapping of fields (field: value)",
    "model_attributes_type": "must be a mapping of fields (field: value)",
    "list_type": "must be a list (one '- ' item per line)",
}


def _message(error: Any, path: Path_) -> str:
    """A pydantic error in words a marketer can act on."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return _unknown_field(path)
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind]
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("True", "true").replace("False", "false")
        return f"must be one of {expected}".rstrip()
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else error["msg"]
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return f"must list at least {least} item{'s' if least != 1 else ''}"
    if kind == "greater_than":
        return f"must be more than {ctx.get('gt'):g}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le'):g}"
    message = str(error["msg"])
    if message.startswith("Value error, "):
        return message[len("Value error, ") :]
    if message.startswith("Input should be "):
        return "must be " + message[len("Input should be ") :]
    return message


def _unknown_field(path: Path_) -> str:
    name = str(path[-1])
    model = _model_at(path[:-1])
    if model is None:
        return f"unknown field {name!r}"
    fields = list(model.model_fields)
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    return f"unknown field {name!r}; allowed here: {', '.join(fields)}"


def _model_at(path: Path_) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path``, if one does."""
    annotation: Any = JourneySpec
    for part in path:
        model = _find_model_or_list(annotation, want_list=isinstance(part, int))
        if model is None:
            return None
        if isinstance(part, int):
            annotation = get_args(model)[0] if get_args(model) else None
        else:
            assert isinstance(model, type) and issubclass(model, BaseModel)
            field = model.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
    found = _find_model_or_list(annotation, want_list=False)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _find_model_or_list(annotation: Any, *, want_list: bool) -> Any:
    """Within ``annotation`` (through Optional/Union/Annotated), a list type or a model class."""
    for candidate in _members(annotation):
        if want_list and get_origin(candidate) is list:
            return candidate
        if not want_list and isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _members(annotation: Any) -> Iterator[Any]:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        for arg in get_args(annotation):
            yield from _members(arg)
    elif origin is not None and getattr(annotation, "__metadata__", None) is not None:
        yield from _members(get_args(annotation)[0])
    else:
        yield annotation


def line_of(lines: dict[Path_, int], path: Path_) -> int:
    """The line of ``path``, or of its nearest parent that exists in the document."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def _field(path: Path_) -> str:
    """``("steps", 2, "wait_for", "timeout")`` → ``steps[2].wait_for.timeout``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or DOCUMENT_FIELD


def sorted_problems(problems: list[SpecProblem]) -> list[SpecProblem]:
    return sorted(problems, key=lambda p: (p.file, p.line or 0))


# -------------------------------------------------------------------- files


def load_journey_file(path: str | Path) -> JourneySpec:
    """Load one journey file; problems are labelled with ``path`` as given."""
    return _load_file(Path(path))[0].spec


def _load_file(path: Path) -> tuple[LoadedJourney, dict[Path_, int]]:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(
            [SpecProblem(name, None, DOCUMENT_FIELD, f"cannot read: {exc.strerror}")]
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise SpecError([SpecProblem(name, None, DOCUMENT_FIELD, _too_large(len(raw)))])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"the file is not UTF-8 text (byte {exc.start})"
        raise SpecError([SpecProblem(name, None, DOCUMENT_FIELD, message)]) from None
    spec, lines = _load(text, file=name)
    return LoadedJourney(name, spec, text), lines


def pack_files(path: str | Path, *, folder: str) -> list[Path]:
    """The YAML files of one kind in a pack, sorted by name.

    ``DIR/<folder>/*.yaml|*.yml`` if that folder exists, else ``DIR/*.yaml|*.yml``;
    names starting with ``_`` (drafts, shared snippets) or ``.`` (editor files)
    are skipped. Subfolders are not searched.
    """
    base = Path(path)
    if (base / folder).is_dir():
        base = base / folder
    return sorted(
        p
        for p in base.iterdir()
        if p.suffix in YAML_SUFFIXES and p.is_file() and not p.name.startswith(("_", "."))
    )


def journey_files(path: str | Path) -> list[Path]:
    """The journey files of a pack (:func:`pack_files` with ``journeys/``)."""
    return pack_files(path, folder="journeys")


def load_journey_dir(path: str | Path) -> list[LoadedJourney]:
    """Load every journey file of a folder (see :func:`journey_files`).

    Raises one :class:`SpecError` with the problems of all files, sorted by file
    and line: each file's own problems, two files using the same ``journey``
    key, a missing folder, or a folder without journey files.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SpecError([SpecProblem(str(folder), None, DOCUMENT_FIELD, "no such folder")])
    files = journey_files(folder)
    if not files:
        message = "no journey files (*.yaml, *.yml) found"
        raise SpecError([SpecProblem(str(folder), None, DOCUMENT_FIELD, message)])
    loaded: list[LoadedJourney] = []
    problems: list[SpecProblem] = []
    owners: dict[str, str] = {}
    for file in files:
        try:
            journey, lines = _load_file(file)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        key = journey.spec.journey
        if key in owners:
            message = f"journey key {key!r} is already used by {owners[key]}"
            problems.append(
                SpecProblem(journey.path, line_of(lines, ("journey",)), "journey", message)
            )
            continue
        owners[key] = journey.path
        loaded.append(journey)
    if problems:
        raise SpecError(sorted_problems(problems))
    return loaded


# ------------------------------------------------------------ normal form


def spec_to_data(spec: JourneySpec) -> dict[str, Any]:
    """The spec as JSON-safe data in normal form; ``model_validate`` reads it back equal.

    Defaults are written out (step ids, ``entry``, ``category``, ...), unset
    optional fields are left out, durations are text such as ``1h30m`` and times
    of day ``HH:MM``. Durations are whole seconds, as the format allows.
    """
    data = _plain(spec)
    assert isinstance(data, dict)
    return data


def _plain(value: Any) -> Any:
    """Models without their None fields; dict values (``set:``) are kept as they are."""
    if isinstance(value, BaseModel):
        fields = ((name, getattr(value, name)) for name in type(value).model_fields)
        return {name: _plain(v) for name, v in fields if v is not None}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, time):
        return f"{value.hour:02d}:{value.minute:02d}"
    if isinstance(value, Enum):
        return value.value
    return value


def spec_checksum(spec: JourneySpec) -> str:
    """SHA-256 (hex) of the canonical JSON of :func:`spec_to_data`.

    Equal specs give equal checksums whatever their file's layout, comments or
    key order, so applying an unchanged file does not create a new version.
    ``status`` is left out: pausing or resuming is not a new version.
    """
    data = spec_to_data(spec)
    data.pop("status", None)
    canonical = json.dumps(
        data,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
