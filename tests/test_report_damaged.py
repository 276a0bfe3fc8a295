"""`labctl report` on damaged run directories: what can be shown is, what is missing is said.

Each case damages a copy of tests/runs/lost-final-ack (a real run of the teardown lab's
lost-final-ack scenario on the Docker engine, committed as it was written) in one way, then
reports on it in every format through the CLI: no traceback, exit 0, and a note naming the
file and what was wrong with it (in the JSON report also as a structured ``damage`` item).
A run written by a newer labctl (schema_version 99) is refused instead: exit 2, one message
naming the file.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from labctl import cli

FIXTURE = Path(__file__).parent / "runs" / "lost-final-ack"
FORMATS = ("term", "md", "html", "json")


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def edit_json(name: str, change):
    def damage(run: Path) -> None:
        data = json.loads((run / name).read_text())
        (run / name).write_text(json.dumps(change(data) or data))
    return damage


def edit_line(name: str, number: int, new: bytes | None):
    """Replace line ``number`` (1-based) of a JSONL file, or with None insert nothing and drop it."""
    def damage(run: Path) -> None:
        content = lines(run / name)
        content[number - 1:number] = [] if new is None else [new]
        (run / name).write_bytes(b"".join(content))
    return damage


def insert_line(name: str, number: int, new: bytes):
    def damage(run: Path) -> None:
        content = lines(run / name)
        content.insert(number - 1, new)
        (run / name).write_bytes(b"".join(content))
    return damage


def cut(name: str, keep):
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[:keep(len(data))])
    return damage


def replace(name: str, data: bytes):
    def damage(run: Path) -> None:
        (run / name).write_bytes(data)
    return damage


def remove(name: str):
    def damage(run: Path) -> None:
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def directory(name: str):
    def damage(run: Path) -> None:
        remove(name)(run)
        (run / name).mkdir()
        (run / name / "x").write_text("")
    return damage


def garbage_record(run: Path) -> None:
    path = run / "pcaps" / "router-left.pcap"
    data = path.read_bytes()
    first = 24 + 16 + int.from_bytes(data[24 + 8:24 + 12], "little")
    path.write_bytes(data[:first] + b"\xff" * 16 + data[first:])


def headers_only(run: Path) -> None:
    for pcap in (run / "pcaps").glob("*.pcap"):
        pcap.write_bytes(pcap.read_bytes()[:24])  # valid, and empty: nothing was captured


def running(run: Path) -> None:
    edit_json("run.json", lambda d: d.update(status="running", ended=None))(run)
    (run / "verdicts.json").unlink()


def verdict_types(data: dict) -> None:
    v = data["verdicts"]
    v[0]["index"] = "one"
    v[1] = "pass"
    v[2]["outcome"] = "maybe"
    del v[2]["passed"]
    v[3]["evidence"][0]["transitions"] = "many"
    v[4]["observed"] = 5


def nodes_list(data: dict) -> None:
    data["nodes"] = list(data["nodes"])


# (id, damage, file the note names, what the note says)
CASES = [
    ("pcap-cut-in-header", cut("pcaps/client-left.pcap", lambda n: 10), "pcaps/client-left.pcap", "cut short in its file header"),
    ("pcap-cut-mid-packet", cut("pcaps/router-right.pcap", lambda n: n - 10), "pcaps/router-right.pcap", "cut short in packet"),
    ("pcap-garbage", replace("pcaps/server-right.pcap", b"GARBAGE!" + bytes(range(256)) * 3), "pcaps/server-right.pcap",
     "not a pcap file"),
    ("pcap-garbage-record", garbage_record, "pcaps/router-left.pcap", "packet 2 (at byte 114) is damaged (its record header is garbage): the one whole packet before it is read"),
    ("pcap-missing", remove("pcaps/client-left.pcap"), "pcaps/client-left.pcap", "it is missing (run.json says client captured on left)"),
    ("pcap-empty", replace("pcaps/server-right.pcap", b""), "pcaps/server-right.pcap", "it is empty (0 bytes)"),
    ("pcap-is-a-directory", directory("pcaps/client-left.pcap"), "pcaps/client-left.pcap", "it is a directory, not a capture"),
    ("pcaps-is-a-file", lambda run: (remove("pcaps")(run), replace("pcaps", b"x")(run)), "pcaps", "it is a file, not the directory"),
    ("run-json-truncated", cut("run.json", lambda n: n // 2), "run.json", "it is cut short (the JSON ends early"),
    ("run-json-garbage", replace("run.json", b"\x89PNG\r\n\x1a\n\x00\x00\xff"), "run.json", "it is not UTF-8 text"),
    ("run-json-not-json", replace("run.json", b"status: complete\n"), "run.json", "it is not valid JSON"),
    ("run-json-a-list", replace("run.json", b"[1, 2, 3]"), "run.json", "it holds a list, not an object"),
    ("run-json-nodes-a-list", edit_json("run.json", nodes_list), "run.json", "its 'nodes' is a list"),
    ("run-json-string-for-number", edit_json("run.json", lambda d: d.update(started="yesterday")), "run.json",
     "its 'started' is a string (\"yesterday\")"),
    ("run-json-interfaces-a-string", edit_json("run.json", lambda d: d["nodes"]["client"].update(interfaces="left")), "run.json",
     "node 'client' has no readable interfaces"),
    ("run-json-unknown-status", edit_json("run.json", lambda d: d.update(status=7)), "run.json", "its 'status' is a number"),
    ("run-json-empty", replace("run.json", b""), "run.json", "it is empty (0 bytes)"),
    ("run-json-is-a-directory", directory("run.json"), "run.json", "it is a directory, not a file"),
    ("run-json-missing", remove("run.json"), "run.json", "it is missing: what ran"),
    ("run-json-no-schema-version", edit_json("run.json", lambda d: d.pop("schema_version") and None), "run.json",
     "it has no schema_version: read as version 1"),
    ("run-still-running", running, "run.json", "it still says 'running'"),
    ("verdicts-truncated", cut("verdicts.json", lambda n: n - 40), "verdicts.json", "it is cut short"),
    ("verdicts-wrong-types", edit_json("verdicts.json", verdict_types), "verdicts.json", "verdict 1's 'index' is a string: left out"),
    ("verdicts-not-a-list", edit_json("verdicts.json", lambda d: d.update(verdicts={"a": 1})), "verdicts.json",
     "its 'verdicts' is an object, not a list"),
    ("verdicts-empty", replace("verdicts.json", b""), "verdicts.json", "it is empty (0 bytes)"),
    ("verdicts-is-a-directory", directory("verdicts.json"), "verdicts.json", "it is a directory, not a file"),
    ("verdicts-missing", remove("verdicts.json"), "verdicts.json", "it is missing: the run did not store its verdicts"),
    ("steps-binary-line", insert_line("steps.jsonl", 5, b"\x00\xff\xfe\x01binary\n"), "steps.jsonl", "line 5 is not UTF-8 text"),
    ("steps-one-bad-line", edit_line("steps.jsonl", 7, b'{"index": 6, "kind": "clo\n'), "steps.jsonl",
     "1 line skipped (line 7 is not valid JSON); the other 12 read"),
    ("steps-empty", replace("steps.jsonl", b""), "steps.jsonl", "it has no record of 13 of the scenario's 13 steps"),
    ("steps-is-a-directory", directory("steps.jsonl"), "steps.jsonl", "it is a directory, not a file"),
    ("states-string-for-number", None, "states.jsonl", "line 3 its 't' is a string"),
    ("states-not-finite", None, "states.jsonl", "line 4 its 't' is not a finite number"),
    ("states-torn-last-line", cut("states.jsonl", lambda n: n - 30), "states.jsonl", "is cut short: its write was interrupted"),
    ("events-a-list-line", edit_line("events.jsonl", 1, b"[1, 2]\n"), "events.jsonl", "line 1 holds a list, not a record"),
    ("rules-packet-a-string", None, "rules.jsonl", "line 2 its 'packet' is a string"),
    ("captures-now-parse-nothing", headers_only, "verdicts.json", "cites segments #6, #8, which the captures do not show now"),
]


def json_line_edit(name: str, number: int, change):
    def damage(run: Path) -> None:
        content = lines(run / name)
        record = json.loads(content[number - 1])
        change(record)
        content[number - 1] = (json.dumps(record) + "\n").encode()
        (run / name).write_bytes(b"".join(content))
    return damage


LINE_EDITS = {
    "states-string-for-number": json_line_edit("states.jsonl", 3, lambda r: r.update(t="soon")),
    "states-not-finite": json_line_edit("states.jsonl", 4, lambda r: r.update(t=float("nan"))),
    "rules-packet-a-string": json_line_edit("rules.jsonl", 2, lambda r: r.update(packet="A 10.250.1.1 > 10.250.2.10")),
}
CASES = [(name, LINE_EDITS.get(name, damage), file, says) for name, damage, file, says in CASES]


def report(run: Path, fmt: str, capsys) -> tuple[int, str, str]:
    """`labctl report RUN --format FMT` through the CLI's own entry point: exit status, stdout, stderr."""
    argv = sys.argv
    sys.argv = ["labctl", "report", str(run), "--format", fmt]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def flat(text: str) -> str:
    """Text as a reader sees it: without Markdown escapes, HTML entities and line wrapping."""
    return re.sub(r"\s+", " ", html.unescape(text).replace("\\", ""))


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    target = tmp_path / "20261201-173507-lost-final-ack-ead7"
    shutil.copytree(FIXTURE, target)
    return target


def test_the_fixture_is_a_whole_real_run(run_copy, capsys):
    run = json.loads((run_copy / "run.json").read_text())
    assert run["status"] == "complete" and run["engine"].startswith("Docker Engine")
    code, out, err = report(run_copy, "json", capsys)
    data = json.loads(out)
    assert code == 0 and data["damage"] == [] and data["outcome"] == "pass" and data["summary"]["segments"] == 10


@pytest.mark.parametrize("name, damage, file, says", CASES, ids=[c[0] for c in CASES])
def test_a_damaged_run_is_reported_with_a_note_naming_the_file(name, damage, file, says, run_copy, capsys):
    damage(run_copy)
    for fmt in FORMATS:
        code, out, err = report(run_copy, fmt, capsys)
        assert code == 0 and "Traceback" not in err, (fmt, err)
        if fmt == "json":
            data = json.loads(out)
            assert any(d["file"] == file and says in d["problem"] for d in data["damage"]), (fmt, data["damage"])
            assert any(says in n and n.startswith(file + ":") for n in data["notes"])
        else:
            assert f"{file}: " in flat(out) and says in flat(out), (fmt, [n for n in flat(out).split("note:") if file in n])


def test_one_bad_line_does_not_drop_the_lines_after_it(run_copy, capsys):
    edit_line("steps.jsonl", 2, b"\x00garbage\n")(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    assert [s["index"] for s in data["steps"]] == [0] + list(range(2, 13))
    assert data["outcome"] == "pass"  # the stored verdicts stand, and are shown as stored


def test_segments_the_captures_no_longer_show_contradict_the_stored_verdicts_out_loud(run_copy, capsys):
    headers_only(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    assert data["summary"]["segments"] == 0
    assert [v["outcome"] for v in data["verdicts"]][:3] == ["pass", "pass", "pass"]  # as stored: the exit status came from them
    problems = [d["problem"] for d in data["damage"] if d["file"] == "verdicts.json"]
    assert any(p.startswith("verdict 1 (exactly 2 [F] segments from server to client) was stored as pass (2 seen: #6, #8), "
                            "but judged again") and "it is fail (none seen)" in p for p in problems), problems


def test_a_cut_capture_keeps_its_whole_packets(run_copy, capsys):
    whole = json.loads(report(run_copy, "json", capsys)[1])
    cut("pcaps/router-right.pcap", lambda n: n - 10)(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    seen = lambda d: sum(1 for s in d["segments"] for x in s["seen"] if x["at"] == "router/right")
    assert seen(data) == seen(whole) - 1 > 0


def test_a_missing_capture_is_inferred_from_the_others_only_when_there_are_others(run_copy, capsys):
    remove("pcaps/client-left.pcap")(run_copy)
    one = {d["file"]: d["problem"] for d in json.loads(report(run_copy, "json", capsys)[1])["damage"]}
    assert one["pcaps/client-left.pcap"].endswith("what crossed client's left is inferred from the other captures")
    for pcap in (run_copy / "pcaps").glob("*.pcap"):
        pcap.unlink()
    every = {d["file"]: d["problem"] for d in json.loads(report(run_copy, "json", capsys)[1])["damage"]}
    assert sorted(f for f in every if f.startswith("pcaps/")) == ["pcaps/client-left.pcap", "pcaps/router-left.pcap", "pcaps/router-right.pcap", "pcaps/server-right.pcap"]
    assert every["pcaps/router-right.pcap"] == ("it is missing (run.json says router captured on right): what crossed router's right "
                                                "is not known: no other capture is there to infer it from")
    assert not any("inferred" in problem for problem in every.values())


def test_without_run_json_the_run_is_not_called_passed(run_copy, capsys):
    remove("run.json")(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    assert data["outcome"] == "undecided" and not data["passed"]
    assert data["summary"]["segments"] == 10  # nodes and interfaces from the captures' names
    assert [v["outcome"] for v in data["verdicts"]] == ["pass"] * 7


def test_a_run_that_never_finished_is_judged_now_and_says_so(run_copy, capsys):
    running(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    assert data["outcome"] == "fail"
    assert data["verdicts"][-1]["kind"] == "run-complete" and data["verdicts"][-1]["outcome"] == "fail"
    assert any(d["file"] == "verdicts.json" and "judged now" in d["problem"] for d in data["damage"])


def test_wrong_typed_verdicts_keep_what_is_readable(run_copy, capsys):
    edit_json("verdicts.json", verdict_types)(run_copy)
    data = json.loads(report(run_copy, "json", capsys)[1])
    problems = {d["problem"] for d in data["damage"] if d["file"] == "verdicts.json"}
    assert {"verdict 2 is a string, not a verdict: left out", "verdict 3's outcome 'maybe' is not pass, fail or undecided: shown as undecided",
            "verdict 4 has evidence that is not a reference labctl writes: left out", "verdict 5's 'observed' is a number: left out"} <= problems
    assert [v["outcome"] for v in data["verdicts"]] == ["pass", "undecided", "pass", "pass", "pass", "pass"]
    assert data["outcome"] == "undecided"


@pytest.mark.parametrize("name", ["run.json", "verdicts.json"])
def test_a_run_from_a_newer_labctl_is_refused_naming_the_file(name, run_copy, capsys):
    edit_json(name, lambda d: d.update(schema_version=99))(run_copy)
    for fmt in FORMATS:
        code, out, err = report(run_copy, fmt, capsys)
        assert code == 2 and out == "" and "Traceback" not in err
        assert flat(err).startswith(f"error: {run_copy / name}: schema_version 99 is newer than this labctl reads (1)"), err


# --- fuzz: random damage of every kind above, combined ------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from labctl.errors import UserError  # noqa: E402
from labctl.report import render  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("LABCTL_FUZZ_EXAMPLES", "100"))
FILES = sorted(str(p.relative_to(FIXTURE)) for p in FIXTURE.rglob("*") if p.is_file())
ODD_VALUES = [None, True, 0, -1, 2 ** 70, 1.5, float("inf"), "", "x", "10.250.1.1", [], [1], {}, {"a": 1}, "\x00"]


def mutate_json(value, path: list[int], replacement):
    """``value`` with the node at ``path`` (indices into dict items or list elements) replaced."""
    if not path or not isinstance(value, (dict, list)) or not value:
        return replacement
    i, rest = path[0] % len(value), path[1:]
    if isinstance(value, dict):
        key = list(value)[i]
        return {**value, key: mutate_json(value[key], rest, replacement)}
    return value[:i] + [mutate_json(value[i], rest, replacement)] + value[i + 1:]


@st.composite
def damage_plans(draw):
    plans = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(FILES))
        kind = draw(st.sampled_from(["cut", "flip", "json", "line", "delete", "dir"]))
        plans.append((name, kind, draw(st.integers(0, 10 ** 6)), draw(st.lists(st.integers(0, 50), max_size=6)),
                      draw(st.sampled_from(ODD_VALUES)), draw(st.binary(max_size=8))))
    return plans


def _json_or_none(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None


def apply(run: Path, plan) -> None:
    for name, kind, n, path, odd, junk in plan:
        target = run / name
        if not target.is_file():
            continue
        data = target.read_bytes()
        if kind == "cut":
            target.write_bytes(data[:n % (len(data) + 1)])
        elif kind == "flip" and data:
            i = n % len(data)
            target.write_bytes(data[:i] + (junk or b"\xff") + data[i + 1:])
        elif kind == "json" and name.endswith(".json"):
            if (whole := _json_or_none(data)) is not None:  # an earlier step of the plan may have broken it already
                target.write_text(json.dumps(mutate_json(whole, path, odd)))
        elif kind == "line" and name.endswith(".jsonl") and data:
            content = data.splitlines(keepends=True)
            i = n % len(content)
            if (line := _json_or_none(content[i])) is not None:
                content[i] = (json.dumps(mutate_json(line, path, odd)) + "\n").encode()
                target.write_bytes(b"".join(content))
        elif kind == "delete":
            target.unlink()
        elif kind == "dir":
            target.unlink()
            target.mkdir()


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(plan=damage_plans())
def test_no_damage_gets_a_traceback_out_of_report(plan, tmp_path_factory):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(FIXTURE, run)
    apply(run, plan)
    for fmt in FORMATS:
        try:
            render([run], fmt)
        except UserError as exc:  # only a newer schema_version, or nothing of a run left
            assert "schema_version" in str(exc) or "not a run directory" in str(exc), exc
