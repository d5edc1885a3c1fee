"""Template files: YAML in, Template out, every problem with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from touchline.errors import SpecError
from touchline.messaging.template_files import (
    load_template_dir,
    load_template_file,
    load_template_text,
)

CART = """\
template: cart-reminder-1
channel: email
subject: "{{ profile.first_name }}, вы забыли корзину"
html: |
  <p>Здравствуйте, {{ profile.first_name }}!</p>
  <p>{{ event.total | money }}</p>
defaults:
  profile.first_name: друг
utm:
  campaign: spring
  content: null
"""


def problems(error: SpecError) -> list[tuple[str, int | None, str, str]]:
    return [(Path(p.file).name, p.line, p.field, p.message) for p in error.problems]


def test_loads_a_valid_file(tmp_path: Path) -> None:
    """A valid file gives a Template with every field read."""
    # given
    (tmp_path / "cart.yaml").write_text(CART, encoding="utf-8")
    # when
    template = load_template_file(tmp_path / "cart.yaml")
    # then
    assert template.name == "cart-reminder-1"
    assert template.channel == "email"
    assert template.subject == "{{ profile.first_name }}, вы забыли корзину"
    assert template.html is not None and template.html.startswith("<p>Здравствуйте")
    assert template.text is None
    assert template.defaults == {"profile.first_name": "друг"}
    assert template.utm == {"campaign": "spring", "content": None}


def test_jinja_error_mapped_to_yaml_line_of_block(tmp_path: Path) -> None:
    """A Jinja error on line 3 of an html block is reported on the file's line 4 + 3."""
    text = (
        "template: t\n"
        "channel: email\n"
        "subject: Hi\n"
        "html: |\n"
        "  <p>one</p>\n"
        "  <p>two</p>\n"
        "  <p>{{ profile.name }</p>\n"
    )
    with pytest.raises(SpecError) as caught:
        load_template_text(text, file="t.yaml")
    [(file, line, field, message)] = problems(caught.value)
    assert (file, line, field) == ("t.yaml", 7, "html")
    assert message.startswith("template line 3: unexpected '}'")
    assert caught.value.code == "invalid_template"


def test_jinja_error_in_one_line_subject(tmp_path: Path) -> None:
    """A Jinja error in a one-line subject is on the subject's own line."""
    text = "template: t\nchannel: email\nsubject: '{% if x %}'\ntext: hi\n"
    with pytest.raises(SpecError) as caught:
        load_template_text(text, file="t.yaml")
    [(_file, line, field, message)] = problems(caught.value)
    assert (line, field) == (3, "subject")
    assert "template line 1" in message


def test_every_problem_reported_together(tmp_path: Path) -> None:
    """Unknown field, missing template, email without subject, bad default: all at once."""
    text = "channel: email\nhtml: <p>hi</p>\nsubjcet: Hi\ndefaults:\n  1bad: x\n"
    with pytest.raises(SpecError) as caught:
        load_template_text(text, file="t.yaml")
    found = {(line, field) for _f, line, field, _m in problems(caught.value)}
    assert found == {
        (1, "template"),
        (3, "subjcet"),
        (1, "subject"),
        (5, "defaults.1bad"),
    }
    messages = " | ".join(p.message for p in caught.value.problems)
    assert "is required" in messages
    assert "an email needs a subject" in messages
    assert "unknown field 'subjcet'" in messages


def test_sms_needs_text_and_has_no_html(tmp_path: Path) -> None:
    """An sms without text and with html is refused with both reasons."""
    text = "template: s\nchannel: sms\nhtml: <p>x</p>\n"
    with pytest.raises(SpecError) as caught:
        load_template_text(text, file="s.yaml")
    fields = [field for _f, _l, field, _m in problems(caught.value)]
    assert sorted(fields) == ["html", "text"]


def test_missing_channel_and_bad_utm(tmp_path: Path) -> None:
    """Missing channel and an unknown UTM name are both located."""
    text = "template: t\ntext: hi\nutm:\n  medium: x\n  sauce: y\n"
    with pytest.raises(SpecError) as caught:
        load_template_text(text, file="t.yaml")
    found = {(line, field) for _f, line, field, _m in problems(caught.value)}
    assert found == {(1, "channel"), (5, "utm.sauce")}


def test_yaml_syntax_error_and_empty_file(tmp_path: Path) -> None:
    """YAML syntax errors and empty files are reported as template problems."""
    with pytest.raises(SpecError) as caught:
        load_template_text("template: [\n", file="t.yaml")
    assert caught.value.problems[0].message.startswith("YAML syntax error")
    with pytest.raises(SpecError) as caught:
        load_template_text("# nothing\n", file="t.yaml")
    assert "a template needs" in caught.value.problems[0].message


def test_dir_reports_all_files_and_duplicate_keys(tmp_path: Path) -> None:
    """Problems of every file come together, including a key used by two files."""
    # given
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "a.yaml").write_text(CART, encoding="utf-8")
    (folder / "b.yaml").write_text(CART, encoding="utf-8")
    (folder / "c.yml").write_text("template: c\nchannel: sms\n", encoding="utf-8")
    (folder / "_draft.yaml").write_text("broken: [", encoding="utf-8")
    # when
    with pytest.raises(SpecError) as caught:
        load_template_dir(tmp_path)
    # then
    found = problems(caught.value)
    assert [(f, line, field) for f, line, field, _m in found] == [
        ("b.yaml", 1, "template"),
        ("c.yml", 1, "(document)"),
        ("c.yml", 2, "text"),
    ]
    assert "already used by" in found[0][3]


def test_dir_loads_templates_sorted(tmp_path: Path) -> None:
    """A clean folder loads every template, sorted by file name."""
    (tmp_path / "b.yaml").write_text("template: b\nchannel: sms\ntext: hi\n", encoding="utf-8")
    (tmp_path / "a.yaml").write_text(CART, encoding="utf-8")
    assert [t.name for t in load_template_dir(tmp_path)] == ["cart-reminder-1", "b"]


def test_missing_folder(tmp_path: Path) -> None:
    """A folder that does not exist is one problem, not a crash."""
    with pytest.raises(SpecError, match="no such folder"):
        load_template_dir(tmp_path / "nope")
