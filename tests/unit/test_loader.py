"""Loading journey files: every problem located by file, line and field."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import time as clock_time
from datetime import timedelta
from pathlib import Path

import pytest

from touchline.errors import SpecError, SpecProblem
from touchline.journeys.loader import (
    DOCUMENT_FIELD,
    MAX_DOCUMENT_BYTES,
    LoadedJourney,
    journey_files,
    load_journey_data,
    load_journey_dir,
    load_journey_file,
    load_journey_text,
    spec_checksum,
    spec_to_data,
)
from touchline.journeys.spec import JourneySpec, Reentry

REFERENCE = Path(__file__).parents[2] / "docs" / "reference" / "journeys.md"

COMPLEX = """\
# yaml-language-server: $schema=https://touchline.dev/schema/journey.json
journey: abandoned-cart
name: Abandoned cart
category: selling
trigger:
  event: Cart Abandoned
  where: &big number(event.properties.total) > 20
entry:
  reentry: once_per_key
  key: cart_id
exit_on:
  - event: Order Completed
    match: cart_id
goal:
  event: Order Completed
  match: cart_id
  within: 3d
  value: event.properties.total
  where: *big
steps:
  - id: pause
    wait: 90m
  - id: morning
    wait_until: {time: 10:00, weekdays: [mon, fri]}
  - id: ab
    split:
      - {name: a, percent: 50}
      - {name: b, percent: 50, goto: opened}
  - send: {channel: email, template: cart-1, when_capped: defer}
  - id: opened
    wait_for:
      event: Email Opened
      timeout: 2d
      on_timeout: done
  - branch:
      cases:
        - when: "'vip' in profile.tags"
          goto: done
      otherwise: tag
  - id: tag
    update_profile:
      set: {country: NO, coupon: null, answer: on, code: 0x1F}
      compute: {score: len(trigger.properties.items)}
      unset: [old]
  - id: done
    exit: true
"""

MINIMAL = """\
journey: welcome
trigger:
  event: Signed Up
steps:
  - send:
      channel: email
      template: welcome
"""


def problems_of(text: str, *, file: str = "j.yaml") -> list[SpecProblem]:
    with pytest.raises(SpecError) as info:
        load_journey_text(text, file=file)
    return info.value.problems


def only_problem(text: str) -> SpecProblem:
    found = problems_of(text)
    assert len(found) == 1, found
    return found[0]


def journey(steps: str, *, head: str = "journey: j\ntrigger:\n  event: E\n") -> str:
    """A journey text with the given ``steps:`` body (dedented, indented under steps)."""
    body = textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ")
    return f"{head}steps:\n{body}\n"


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


# ------------------------------------------------------------------ valid files


def test_complex_file_loads_with_defaults_and_yaml_12_scalars() -> None:
    """A file using every step kind loads, with default ids and YAML 1.2 values."""
    spec = load_journey_text(COMPLEX, file="cart.yaml")

    assert spec.journey == "abandoned-cart"
    assert spec.entry.reentry is Reentry.once_per_key and spec.entry.key == "cart_id"
    assert spec.goal is not None and spec.goal.within == timedelta(days=3)
    assert spec.goal.where == spec.trigger.where == "number(event.properties.total) > 20"
    assert [s.id for s in spec.steps] == [
        "pause", "morning", "ab", "step-4", "opened", "step-6", "tag", "done"
    ]  # fmt: skip
    assert spec.steps[0].wait == timedelta(minutes=90)
    assert spec.steps[1].wait_until is not None
    assert spec.steps[1].wait_until.time == clock_time(10, 0)  # not sexagesimal 600
    update = spec.steps[6].update_profile
    assert update is not None
    assert update.set == {"country": "NO", "coupon": None, "answer": "on", "code": 31}


def test_minimal_file_gets_default_entry_rule() -> None:
    """Without `entry`, re-entry is not_within 1d and the category is engaging."""
    spec = load_journey_text(MINIMAL, file="welcome.yaml")

    assert spec.entry.reentry is Reentry.not_within
    assert spec.entry.not_within == timedelta(days=1)
    assert spec.category.value == "engaging"


def test_load_journey_data_reads_yaml_12_core_scalars() -> None:
    """Plain data follows YAML 1.2: times and yes/no stay text, 0o/0x are numbers."""
    data = load_journey_data(
        "a: 10:00\nb: no\nc: 0o17\nd: 1e3\ne: ~\nf: True\ng: 2024-01-02\nh: 012\n", file="x"
    )

    assert data == {
        "a": "10:00", "b": "no", "c": 15, "d": 1000.0, "e": None, "f": True,
        "g": "2024-01-02", "h": 12,
    }  # fmt: skip


# --------------------------------------------------------------- error paths


def test_duplicate_key_is_reported_at_second_occurrence() -> None:
    """A key repeated in one mapping is an error on the repeat's line, naming the first."""
    text = journey(
        """
        - wait_for:
            event: Email Opened
            timeout: 2d
            timeout: 3d
        """
    )

    problem = only_problem(text)

    assert problem.line == 8
    assert problem.field == "steps[0].wait_for.timeout"
    assert problem.message == "duplicate key 'timeout' (first on line 7)"


def test_duplicate_top_level_key() -> None:
    """Two `journey:` keys at the top level are caught, not silently merged."""
    problem = only_problem("journey: a\n" + MINIMAL)

    assert (problem.line, problem.field) == (2, "journey")
    assert "duplicate key 'journey'" in problem.message


def test_unknown_field_suggests_the_closest_known_one() -> None:
    """A misspelt step field names the field it probably meant."""
    text = journey("- id: a\n  wiat: 1h\n")

    problem = only_problem(text)

    assert problem == SpecProblem(
        "j.yaml", 6, "steps[0].wiat", "unknown field 'wiat'; did you mean 'wait'?"
    )


def test_unknown_field_without_close_match_lists_the_allowed_ones() -> None:
    """A field nothing like a known one gets the list of fields allowed there."""
    problem = only_problem(MINIMAL.replace("trigger:\n", "trigger:\n  colour: red\n"))

    assert problem.field == "trigger.colour"
    assert problem.line == 3
    assert (
        problem.message
        == "unknown field 'colour'; allowed here: event, date, schedule, segment, on, where"
    )


def test_bad_duration_is_reported_on_its_line() -> None:
    """A duration without a unit is reported at the field with the reason."""
    text = journey(
        """
        - id: a
          wait_for:
            event: Opened
            timeout: 2 days
        """
    )

    problem = only_problem(text)

    assert (problem.line, problem.field) == (8, "steps[0].wait_for.timeout")
    assert problem.message.startswith("'2 days' is not a duration; write a number and a unit")


def test_missing_trigger_points_at_the_document_start() -> None:
    """A missing top-level field is reported at the first line of the document."""
    text = "# a comment\n\njourney: j\nsteps:\n  - wait: 1h\n"

    problem = only_problem(text)

    assert problem == SpecProblem("j.yaml", 3, "trigger", "is required")


def test_missing_nested_field_points_at_its_parent() -> None:
    """A missing field inside a step is reported on the line of the mapping it belongs in."""
    text = journey("- wait: 1h\n- wait_for:\n    event: Opened\n")

    problem = only_problem(text)

    assert (problem.line, problem.field, problem.message) == (
        6, "steps[1].wait_for.timeout", "is required"
    )  # fmt: skip


def test_bad_goto_target_names_the_known_steps() -> None:
    """A goto to a step that does not exist is reported at the goto, listing the ids."""
    text = journey(
        """
        - id: check
          branch:
            cases:
              - when: profile.vip == true
                goto: nowhere
        - id: done
          exit: true
        """
    )

    problem = only_problem(text)

    assert (problem.line, problem.field) == (9, "steps[0].branch.cases[0].goto")
    assert problem.message == "no step with id 'nowhere' (steps: check, done, or 'exit')"


def test_split_not_adding_up_to_100() -> None:
    """Split percentages that do not add up to 100 are reported at the split."""
    text = journey(
        """
        - wait: 1h
        - split:
            - {name: a, percent: 40}
            - {name: b, percent: 50}
        """
    )

    problem = only_problem(text)

    assert (problem.line, problem.field) == (6, "steps[1].split")
    assert problem.message == "variant percentages add up to 90, not 100"


def test_bad_condition_reports_its_column() -> None:
    """A condition's syntax error carries the column inside the condition."""
    text = journey(
        """
        - branch:
            cases:
              - when: profile.x = 1
                goto: exit
        """
    )

    problem = only_problem(text)

    assert (problem.line, problem.field) == (7, "steps[0].branch.cases[0].when")
    assert problem.message.endswith("(column 11)")
    assert "'=='" in problem.message


def test_duplicate_step_id_is_reported_at_the_second_step() -> None:
    """Two steps with one id: the second is reported, naming the first's position."""
    text = journey("- id: a\n  wait: 1h\n- id: a\n  wait: 2h\n")

    problem = only_problem(text)

    assert (problem.line, problem.field) == (7, "steps[1].id")
    assert problem.message == "step id 'a' is used twice (also step 1)"


def test_step_with_two_kinds() -> None:
    """A step with two kinds is one problem at the step, naming both kinds."""
    problem = only_problem(journey("- wait: 1h\n  send: {channel: email, template: t}\n"))

    assert (problem.line, problem.field) == (5, "steps[0]")
    assert problem.message.endswith("(found: wait, send)")


def test_union_errors_collapse_into_one_message() -> None:
    """A value failing both members of `exit: true | str` yields one readable problem."""
    problem = only_problem(journey("- exit: [1]\n"))

    assert problem.field == "steps[0].exit"
    assert problem.message == "must be one of true or text"


def test_enum_and_type_messages_are_plain() -> None:
    """Pydantic phrasing is replaced with words a marketer reads easily."""
    found = problems_of(MINIMAL + "category: sales\nexit_on: cart\n")

    assert [(p.field, p.message) for p in found] == [
        ("category", "must be one of 'transactional', 'engaging' or 'selling'"),
        ("exit_on", "must be a list (one '- ' item per line)"),
    ]


def test_yaml_syntax_error_gives_its_line() -> None:
    """A YAML syntax error is one problem for the document on the offending line."""
    text = "journey: j\ntrigger:\n  event: E\n  where: a: b\nsteps: []\n"

    problem = only_problem(text)

    assert (problem.line, problem.field) == (4, DOCUMENT_FIELD)
    assert problem.message.startswith("YAML syntax error: mapping values are not allowed here")


def test_control_character_gives_its_line() -> None:
    """A character YAML forbids (here BEL) is a syntax problem on its line."""
    problem = only_problem(MINIMAL.replace("Signed Up", "Signed\aUp"))

    assert (problem.line, problem.field) == (3, DOCUMENT_FIELD)
    assert problem.message == "YAML syntax error: special characters are not allowed ('\\x07')"


def test_several_problems_are_reported_at_once_sorted_by_line() -> None:
    """Shape problems anywhere in the file all come back in one SpecError."""
    text = journey(
        """
        - id: a
          wiat: 1h
        - id: b
          wait: 5 minutes
        - send: {channel: email, template: t}
          send: {channel: sms, template: t}
        """,
        head="journey: Bad Key\ntrigger: {}\n",
    )

    found = problems_of(text)

    assert [(p.line, p.field) for p in found] == [
        (1, "journey"),
        (2, "trigger"),
        (5, "steps[0].wiat"),
        (7, "steps[1].wait"),
        (9, "steps[2].send"),
    ]


def test_several_cross_field_problems_are_reported_at_once() -> None:
    """Ids, targets, splits and conditions are all checked, not just the first."""
    text = journey(
        """
        - id: a
          wait: 1h
          next: nope
        - id: a
          split:
            - {name: x, percent: 30}
        - branch:
            cases:
              - when: profile.x ==
                goto: exit
        """,
        head="journey: j\ntrigger:\n  event: E\n  where: profil.x\n",
    )

    found = problems_of(text)

    assert [(p.line, p.field) for p in found] == [
        (4, "trigger.where"),
        (8, "steps[0].next"),
        (9, "steps[1].id"),
        (10, "steps[1].split"),
        (14, "steps[2].branch.cases[0].when"),
    ]


def test_problem_lines_follow_flow_style_items() -> None:
    """Items written inline (`[...]`, `{...}`) are located on their own line."""
    text = journey("- wait_until: {time: '10:00', weekdays: [mon, funday]}\n")

    problem = only_problem(text)

    assert (problem.line, problem.field) == (5, "steps[0].wait_until.weekdays[1]")
    assert problem.message.startswith("must be one of 'mon', 'tue'")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty; a journey needs at least journey:, trigger: and steps:"),
        (
            "# only a comment\n",
            "the file is empty; a journey needs at least journey:, trigger: and steps:",
        ),
        (
            "- a\n- b\n",
            "a journey file must be a mapping of fields (journey:, trigger:, steps:, ...)",
        ),
        (
            "just text\n",
            "a journey file must be a mapping of fields (journey:, trigger:, steps:, ...)",
        ),
    ],
)
def test_documents_that_are_not_journeys(text: str, message: str) -> None:
    """Empty files and non-mappings are one document-level problem."""
    problem = only_problem(text)

    assert (problem.field, problem.message) == (DOCUMENT_FIELD, message)


def test_several_yaml_documents_are_rejected() -> None:
    """A file with two `---` documents is an error, not a silently ignored second half."""
    problem = only_problem(MINIMAL + "---\n" + MINIMAL)

    assert problem.field == DOCUMENT_FIELD
    assert "expected a single document" in problem.message


def test_python_tags_are_rejected_not_constructed() -> None:
    """Unsafe tags are reported as unsupported and never constructed."""
    text = MINIMAL.replace("template: welcome", "template: !!python/object/apply:os.system [echo]")

    problem = only_problem(text)

    assert (problem.line, problem.field) == (7, "steps[0].send.template")
    assert problem.message == (
        "the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not supported"
    )


def test_merge_keys_are_rejected() -> None:
    """`<<:` merge keys get a specific message instead of an unknown-field one."""
    text = journey("- send:\n    <<: {channel: email}\n    template: t\n")

    found = problems_of(text)

    assert [(p.line, p.field) for p in found] == [
        (5, "steps[0].send.channel"),  # nothing was merged in
        (6, "steps[0].send.<<"),
    ]
    assert "merge keys (<<) are not supported" in found[1].message


def test_non_finite_numbers_are_rejected() -> None:
    """`.inf` / `.nan` are refused, so the normal form stays valid JSON."""
    text = journey("- split:\n    - {name: a, percent: .nan}\n")

    problem = only_problem(text)  # not also "must be a number"

    assert (problem.line, problem.field) == (6, "steps[0].split[0].percent")
    assert problem.message == "'.nan' is not allowed; write an ordinary number"


def test_complex_mapping_keys_are_rejected() -> None:
    """A list used as a mapping key is an error at that key."""
    problem = problems_of(MINIMAL + "? [a, b]\n: c\n")[0]

    assert (problem.line, problem.field) == (8, DOCUMENT_FIELD)
    assert problem.message == "a key must be plain text, not a list or mapping"


# ---------------------------------------------------------------------- limits


def test_document_over_the_size_limit_is_refused_before_parsing() -> None:
    """A file over 256 KB is one problem without a line, whatever its content."""
    text = MINIMAL + "#" * MAX_DOCUMENT_BYTES

    problem = only_problem(text)

    assert (problem.line, problem.field) == (None, DOCUMENT_FIELD)
    assert problem.message == "the file is 257 KB; the limit is 256 KB"


def test_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    """load_journey_file checks the byte size before decoding or parsing."""
    path = write(tmp_path, "big.yaml", "x" * (MAX_DOCUMENT_BYTES + 1))

    with pytest.raises(SpecError) as info:
        load_journey_file(path)

    assert info.value.problems == [
        SpecProblem(str(path), None, DOCUMENT_FIELD, "the file is 257 KB; the limit is 256 KB")
    ]


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    """Thousands of nested brackets (a few KB) are a limit problem, not a crash."""
    problem = only_problem("a: " + "[" * 5000 + "]" * 5000 + "\n")

    assert (problem.line, problem.field) == (None, DOCUMENT_FIELD)
    assert problem.message == "the file is nested more than 64 levels deep"


def test_alias_bomb_is_stopped_by_the_node_limit() -> None:
    """A "billion laughs" document (10^9 values) is refused once it passes the node limit."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]

    problem = only_problem("\n".join(lines) + "\n")

    assert problem.field == DOCUMENT_FIELD
    assert "more than 20000 YAML values" in problem.message


def test_recursive_alias_is_refused() -> None:
    """An alias that contains itself is a limit problem, not a RecursionError."""
    problem = only_problem("journey: &j [*j]\n")

    assert problem.field == DOCUMENT_FIELD
    assert "nested more than 64 levels" in problem.message


# ------------------------------------------------------------------------ files


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_load_journey_file_labels_problems_with_the_path(tmp_path: Path) -> None:
    """Problems of a file carry its path as given."""
    path = write(tmp_path, "bad.yaml", MINIMAL.replace("event: Signed Up", "event: ''"))

    with pytest.raises(SpecError) as info:
        load_journey_file(path)

    assert info.value.problems == [SpecProblem(str(path), 3, "trigger.event", "must not be empty")]
    assert str(info.value) == f"{path}:3: trigger.event: must not be empty"


def test_load_journey_file_refuses_non_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is one readable problem."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.replace("welcome", "bem-vindo \xe0").encode("latin-1"))

    with pytest.raises(SpecError) as info:
        load_journey_file(path)

    assert info.value.problems[0].message.startswith("the file is not UTF-8 text")


def test_load_journey_file_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    """A UTF-8 BOM written by some editors does not break loading."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())

    assert load_journey_file(path).journey == "welcome"


def test_dir_prefers_the_journeys_subfolder_and_skips_underscores(tmp_path: Path) -> None:
    """DIR/journeys/ is used when present; _drafts, dotfiles and other suffixes are skipped."""
    write(tmp_path, "workspace.yaml", "not: a journey\n")
    write(tmp_path, "journeys/b.yml", MINIMAL.replace("welcome", "bee"))
    write(tmp_path, "journeys/a.yaml", MINIMAL)
    write(tmp_path, "journeys/_draft.yaml", "broken: [\n")
    write(tmp_path, "journeys/.#a.yaml", "broken: [\n")
    write(tmp_path, "journeys/notes.txt", "hello\n")
    write(tmp_path, "journeys/nested/c.yaml", "broken: [\n")

    loaded = load_journey_dir(tmp_path)

    assert [(Path(j.path).name, j.spec.journey) for j in loaded] == [
        ("a.yaml", "welcome"),
        ("b.yml", "bee"),
    ]
    assert loaded[0] == LoadedJourney(
        str(tmp_path / "journeys" / "a.yaml"), loaded[0].spec, MINIMAL
    )


def test_dir_without_journeys_subfolder_reads_the_dir_itself(tmp_path: Path) -> None:
    """Without a journeys/ folder, the YAML files directly in DIR are the journeys."""
    write(tmp_path, "welcome.yaml", MINIMAL)

    assert [j.spec.journey for j in load_journey_dir(tmp_path)] == ["welcome"]
    assert journey_files(tmp_path) == [tmp_path / "welcome.yaml"]


def test_dir_collects_problems_of_all_files_sorted(tmp_path: Path) -> None:
    """One SpecError lists every file's problems, sorted by file and line."""
    write(
        tmp_path, "b.yaml", MINIMAL.replace("template: welcome", "template: welcome\n      sned: 1")
    )
    write(tmp_path, "a.yaml", "journey: a\nsteps:\n  - wait: 1x\n")
    write(tmp_path, "c.yaml", MINIMAL.replace("welcome", "other"))

    with pytest.raises(SpecError) as info:
        load_journey_dir(tmp_path)

    assert [(Path(p.file).name, p.line, p.field) for p in info.value.problems] == [
        ("a.yaml", 1, "trigger"),
        ("a.yaml", 3, "steps[0].wait"),
        ("b.yaml", 8, "steps[0].send.sned"),
    ]


def test_dir_rejects_a_journey_key_used_by_two_files(tmp_path: Path) -> None:
    """Two files with one journey key: the later file is reported at its `journey` line."""
    write(tmp_path, "a.yaml", MINIMAL)
    write(tmp_path, "b.yaml", "# copy\n" + MINIMAL)

    with pytest.raises(SpecError) as info:
        load_journey_dir(tmp_path)

    first = str(tmp_path / "a.yaml")
    assert info.value.problems == [
        SpecProblem(
            str(tmp_path / "b.yaml"),
            2,
            "journey",
            f"journey key 'welcome' is already used by {first}",
        )
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such folder"), ("", "no journey files (*.yaml, *.yml) found")],
)
def test_dir_that_is_missing_or_empty_is_an_error(tmp_path: Path, name: str, message: str) -> None:
    """A wrong path or an empty folder is an error, not an empty list."""
    with pytest.raises(SpecError) as info:
        load_journey_dir(tmp_path / name)

    assert [p.message for p in info.value.problems] == [message]


# ------------------------------------------------------------------ normal form

ROUND_TRIP = {
    "complex": COMPLEX,
    "minimal": MINIMAL,
    "reentry-always": MINIMAL + "entry: {reentry: always}\n",
    "not-within-weeks": MINIMAL + "entry: {not_within: 2w}\nstatus: paused\n",
    "exit-reason": journey("- wait: 1d1s\n- exit: bought elsewhere\n"),
    "goal-no-exit": MINIMAL + "goal: {event: Bought, exit: false}\n",
    "wait-for-targets": journey(
        "- wait_for: {event: E, timeout: 36h, on_event: exit, on_timeout: b}\n- {id: b, wait: 1s}\n"
    ),
}


@pytest.mark.parametrize("text", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_spec_to_data_round_trips(text: str) -> None:
    """model_validate(spec_to_data(spec)) == spec, through real JSON."""
    spec = load_journey_text(text, file="x.yaml")

    data = json.loads(json.dumps(spec_to_data(spec), allow_nan=False))

    assert JourneySpec.model_validate(data) == spec


def test_spec_to_data_normal_form() -> None:
    """Durations are shortest text, times HH:MM, defaults written out, unset fields left out."""
    data = spec_to_data(load_journey_text(COMPLEX, file="x.yaml"))

    assert data["steps"][0] == {"id": "pause", "wait": "1h30m"}
    assert data["steps"][1]["wait_until"] == {"time": "10:00", "weekdays": ["mon", "fri"]}
    assert data["steps"][3] == {
        "id": "step-4", "send": {"channel": "email", "template": "cart-1", "when_capped": "defer"}
    }  # fmt: skip
    assert data["status"] == "active" and data["goal"]["within"] == "3d"
    assert data["steps"][6]["update_profile"]["set"]["coupon"] is None  # dict values kept


def test_checksum_ignores_layout_but_not_meaning() -> None:
    """Comments, key order and duration spelling keep the checksum; a change alters it."""
    a = load_journey_text(journey("- wait: 90m\n"), file="a")
    b = load_journey_text(
        "# same\nsteps: [{wait: 1h30m}]\ntrigger: {event: E}\njourney: j\nentry: {not_within: 24h}\n",
        file="b",
    )
    c = load_journey_text(journey("- wait: 91m\n"), file="c")

    assert re.fullmatch(r"[0-9a-f]{64}", spec_checksum(a))
    assert spec_checksum(a) == spec_checksum(b)
    assert spec_checksum(a) != spec_checksum(c)


# ------------------------------------------------------------------- the docs


def reference_examples() -> list[str]:
    """Every full journey (```yaml block with a top-level `journey:`) in the reference."""
    found = re.findall(r"```yaml\n(.*?)```", REFERENCE.read_text(encoding="utf-8"), re.S)
    blocks = [textwrap.dedent(b) for b in found]  # blocks inside list items are indented
    return [b for b in blocks if re.search(r"^journey:", b, re.M)]


def test_reference_has_examples() -> None:
    """The reference still contains the examples the next test checks."""
    assert len(reference_examples()) >= 15


@pytest.mark.parametrize(
    "text",
    reference_examples(),
    ids=[re.findall(r"^journey: (\S+)", t, re.M)[0] for t in reference_examples()],
)
def test_reference_examples_load_and_round_trip(text: str) -> None:
    """Every journey shown in docs/reference/journeys.md is valid as printed."""
    spec = load_journey_text(text, file="journeys.md")

    assert JourneySpec.model_validate(spec_to_data(spec)) == spec
