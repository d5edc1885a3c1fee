"""Template files (YAML, one template per file) in, :class:`Template` objects out.

A pack keeps its templates in ``templates/``::

    template: cart-reminder-1
    channel: email
    subject: "{{ profile.first_name }}, вы забыли корзину"
    html: |
      <p>Здравствуйте, {{ profile.first_name }}!</p>
    text: ...            # optional for email: derived from html
    defaults:
      profile.first_name: друг
    utm:                 # optional; null leaves a parameter out
      campaign: spring

Files are read with the journey loader's YAML rules (YAML 1.2 core scalars,
duplicate keys refused, size limits) and, like journeys, every problem of every
file is reported at once with file, line and field. A Jinja syntax error is
placed on the YAML line it falls on: for a block scalar (``html: |``) line N of
the template is N lines below the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from touchline.errors import SpecError, SpecProblem
from touchline.journeys.loader import DOCUMENT_FIELD, MAX_DOCUMENT_BYTES, pack_files

# The loader's reader keeps the line of every key; it is private there, shared here on purpose.
from touchline.journeys.loader import line_of as _line_of
from touchline.journeys.loader import read_yaml as _read_yaml
from touchline.journeys.loader import sorted_problems as _sorted_problems
from touchline.messaging.templates import PARTS, Template, TemplateError, compile_template

__all__ = [
    "FIELDS",
    "load_template_dir",
    "load_template_file",
    "load_template_text",
    "template_files",
]

FIELDS = ("template", "channel", "subject", "html", "text", "defaults", "utm")
TEMPLATE_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
UTM_NAMES = ("source", "medium", "campaign", "content", "term")

_Lines = dict[tuple[str | int, ...], int]
_Problem = Callable[..., None]


def _error(problems: list[SpecProblem]) -> SpecError:
    error = SpecError(_sorted_problems(problems))
    error.code = "invalid_template"
    return error


def _retitle(problem: SpecProblem) -> SpecProblem:
    if problem.message.startswith("the file is empty"):
        message = "the file is empty; a template needs at least template:, channel: and a body"
        return SpecProblem(problem.file, problem.line, problem.field, message)
    return problem


def load_template_text(text: str, *, file: str) -> Template:
    """Parse and check one template document; :class:`SpecError` lists every problem."""
    return _load(text, file=file)[0]


def _load(text: str, *, file: str) -> tuple[Template, _Lines]:
    try:
        data, lines, problems = _read_yaml(text, file=file)
    except SpecError as exc:  # syntax, size, empty: the reader stops there
        raise _error([_retitle(p) for p in exc.problems]) from None
    if not isinstance(data, dict):
        message = "a template file must be a mapping of fields (template:, channel:, ...)"
        raise _error([*problems, SpecProblem(file, lines.get((), 1), DOCUMENT_FIELD, message)])

    def problem(
        field: str, message: str, *, line: int | None = None, key: str | None = None
    ) -> None:
        """Records a problem on ``line``, else on the line of ``field`` (``key`` inside it)."""
        path = (field,) if key is None else (field, key)
        where = line if line is not None else _line_of(lines, path)
        problems.append(
            SpecProblem(file, where, field if key is None else f"{field}.{key}", message)
        )

    for name in data:
        if name not in FIELDS:
            problem(name, f"unknown field {name!r}; allowed here: {', '.join(FIELDS)}")
    key = _text(data, "template", problem, required=True)
    if key is not None and not TEMPLATE_KEY_RE.match(key):
        problem("template", "must be 1-200 letters, digits, '.', '-' or '_'")
    channel = _text(data, "channel", problem, required=True)
    if channel is not None and not CHANNEL_RE.match(channel):
        problem("channel", "must be 1-64 lowercase letters, digits, '-' or '_' (email, sms, ...)")
    parts = {part: _text(data, part, problem) for part in PARTS}
    defaults = _defaults(data, problem)
    utm = _utm(data, problem)
    if not any(parts.values()):
        problem(DOCUMENT_FIELD, "a template needs a body: text: or html:", line=lines.get((), 1))
    # A part the channel needs but the file lacks is reported on the channel's line.
    channel_line = _line_of(lines, ("channel",))
    if channel == "email" and not parts["subject"]:
        problem("subject", "an email needs a subject", line=channel_line)
    if channel == "sms":
        if not parts["text"]:
            problem("text", "an sms needs text:", line=channel_line)
        for part in ("subject", "html"):
            if parts[part] is not None:
                problem(part, f"an sms is plain text and has no {part}; use text:")
    name = key or Path(file).stem
    for part, source in parts.items():
        if source is None:
            continue
        try:
            only = {p: source if p == part else None for p in PARTS}
            compile_template(
                Template(name, "", subject=only["subject"], html=only["html"], text=only["text"])
            )
        except TemplateError as exc:
            problem(
                part,
                f"template line {exc.line}: {exc.detail}" if exc.line else exc.detail,
                line=_yaml_line(text, lines, part, exc.line),
            )
    if problems:
        raise _error(problems)
    assert key is not None and channel is not None
    template = Template(
        name=key,
        channel=channel,
        subject=parts["subject"],
        html=parts["html"],
        text=parts["text"],
        defaults=defaults,
        utm=utm,
    )
    return template, lines


def _text(
    data: dict[str, Any], name: str, problem: _Problem, *, required: bool = False
) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            problem(name, "is required")
        return None
    if not isinstance(value, str):
        problem(name, "must be text")
        return None
    if required and not value.strip():
        problem(name, "must not be empty")
        return None
    return value


def _defaults(data: dict[str, Any], problem: _Problem) -> dict[str, Any]:
    value = data.get("defaults")
    if value is None:
        return {}
    if not isinstance(value, dict):
        problem(
            "defaults", "must be a mapping of dotted names to values (profile.first_name: друг)"
        )
        return {}
    for name, item in value.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", name):
            problem("defaults", "must be a dotted name such as profile.first_name", key=name)
        elif item is None:
            problem("defaults", "a default must have a value", key=name)
    return cast(dict[str, Any], value)


def _utm(data: dict[str, Any], problem: _Problem) -> dict[str, str | None] | None:
    value = data.get("utm")
    if value is None:
        return None
    if not isinstance(value, dict):
        problem("utm", f"must be a mapping of {', '.join(UTM_NAMES)} to text (or null)")
        return None
    for name, item in value.items():
        if name.removeprefix("utm_") not in UTM_NAMES:
            problem("utm", f"unknown UTM parameter; allowed: {', '.join(UTM_NAMES)}", key=name)
        elif item is not None and not isinstance(item, str | int):
            problem("utm", "must be text or null", key=name)
    return {k: None if v is None else str(v) for k, v in value.items()}


def _yaml_line(text: str, lines: _Lines, part: str, template_line: int | None) -> int:
    """The file line of ``template_line`` of ``part``: below the key for a block scalar."""
    key_line = _line_of(lines, (part,))
    if template_line is None:
        return key_line
    source_lines = text.splitlines()
    key_text = source_lines[key_line - 1] if key_line <= len(source_lines) else ""
    if re.match(rf"^\s*{re.escape(part)}\s*:\s*[|>][-+0-9]*\s*(#.*)?$", key_text):
        return key_line + template_line
    return key_line + template_line - 1  # flow scalar: its first line is the key's


# -------------------------------------------------------------------- files


def load_template_file(path: str | Path) -> Template:
    """Load one template file; problems are labelled with ``path`` as given."""
    return _load_file(Path(path))[0]


def _load_file(path: Path) -> tuple[Template, _Lines]:
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _error(
            [SpecProblem(name, None, DOCUMENT_FIELD, f"cannot read: {exc.strerror}")]
        ) from None
    if len(raw) > MAX_DOCUMENT_BYTES:
        message = f"the file is over the limit of {MAX_DOCUMENT_BYTES // 1024} KB"
        raise _error([SpecProblem(name, None, DOCUMENT_FIELD, message)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"the file is not UTF-8 text (byte {exc.start})"
        raise _error([SpecProblem(name, None, DOCUMENT_FIELD, message)]) from None
    return _load(text, file=name)


def template_files(path: str | Path) -> list[Path]:
    """The template files of a pack (:func:`~touchline.journeys.loader.pack_files`
    with ``templates/``)."""
    return pack_files(path, folder="templates")


def load_template_dir(path: str | Path) -> list[Template]:
    """Load every template file of a folder (see :func:`template_files`).

    Raises one :class:`SpecError` with the problems of all files, sorted by file
    and line, including two files that use the same ``template`` key. A folder
    with no template files gives an empty list: a pack may send nothing.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise _error([SpecProblem(str(folder), None, DOCUMENT_FIELD, "no such folder")])
    loaded: list[Template] = []
    problems: list[SpecProblem] = []
    owners: dict[str, str] = {}
    for file in template_files(folder):
        try:
            template, lines = _load_file(file)
        except SpecError as exc:
            problems.extend(exc.problems)
            continue
        if template.name in owners:
            message = f"template key {template.name!r} is already used by {owners[template.name]}"
            problems.append(
                SpecProblem(str(file), _line_of(lines, ("template",)), "template", message)
            )
            continue
        owners[template.name] = str(file)
        loaded.append(template)
    if problems:
        raise _error(problems)
    return loaded
