"""Reports from run directories made by hand (real pcaps written with dpkt): the
analysis they rest on, the ladder's geometry, every format, and the CLI. No Docker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from labctl import api
from labctl.analyze.timeline import load
from labctl.report import html, jsonreport, ladder, markdown, term
from labctl.report.model import build, compare

from . import synthetic, tshark
from .browser import Browser, chromium

SVG = "{http://www.w3.org/2000/svg}"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {make().name: make().write(root) for make in (synthetic.normal_close, synthetic.lost_final_ack, synthetic.resets,
                                                          synthetic.duplicated, synthetic.old_duplicate)}


def by_label(report, label: str):
    return [s for s in report.segments if s.label == label]


# --- analysis ---------------------------------------------------------------------------

def test_a_normal_close_crosses_a_router_that_did_nothing(runs):
    report = build(runs["normal-close"])

    assert [lane.name for lane in report.lanes] == ["client", "server"]
    assert [(s.sender, s.flags) for s in report.segments] == [
        ("client", "S"), ("server", "SA"), ("client", "A"), ("client", "PA"), ("server", "A"), ("client", "FA"), ("server", "FA"),
        ("client", "A")]
    # Every segment is one transmission seen at the four captures, in path order.
    assert all([x.at for x in s.seen] in (["client/left", "router/left", "router/right", "server/right"],
                                          ["server/right", "router/right", "router/left", "client/left"]) for s in report.segments)
    assert (report.segments[5].rel_seq, report.segments[5].rel_ack) == (6, 1)
    assert not any(s.marks for s in report.segments)
    client = next(k for k in report.sockets if k.node == "client")
    assert client.states == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    assert client.bands[-1].end is None and client.bands[-1].timer_ms == 59990


def test_a_final_ack_dropped_at_the_router_left_the_client_and_never_reached_the_server(runs):
    report = build(runs["lost-final-ack"])
    lost = report.segments[7]

    assert (lost.label, lost.fate, lost.dropped_after) == ("ACK seq=7 ack=2 len=0", "dropped", "router")
    assert [x.at for x in lost.seen] == ["client/left", "router/left"]
    assert lost.rules == ["rule lose_ack at router: drop"]
    assert report.rules[0].segment == lost.id
    again = report.segments[8]
    assert (again.sender, again.label, again.retransmission) == ("server", "FIN ACK seq=1 ack=7 len=0", True)
    answer = report.segments[9]
    assert (answer.label, answer.fate, answer.dup_ack, answer.retransmission) == ("ACK seq=7 ack=2 len=0", "delivered", True, False)
    # The router acted, so it gets a lane, between the endpoints.
    assert [lane.name for lane in report.lanes] == ["client", "router", "server"]
    assert "dropped #7" in report.lanes[1].acted
    assert report.summary["dropped"] == 1 and report.summary["retransmissions"] == 1


def test_resets_are_told_apart_by_why_they_were_sent(runs):
    report = build(runs["resets"])
    rsts = [(s.sender, s.flags, s.rst) for s in report.segments if "R" in s.flags]

    assert rsts == [("client", "RA", "abort"), ("server", "RA", "refused"), ("client", "R", "reply")]
    assert any("RST (refused)" in note for note in report.notes)
    # Three 4-tuples (and so three connections) on one client port.
    assert len(report.connections) == 3


def test_a_copy_made_by_the_router_is_a_duplicate_not_a_retransmission(runs):
    report = build(runs["duplicated"])
    original, copy = by_label(report, "PSH ACK seq=6 ack=1 len=5")

    assert (copy.duplicate_of, copy.origin, copy.retransmission) == (original.number, "router", False)
    assert [x.at for x in copy.seen] == ["router/right", "server/right"]
    assert original.rules == ["rule dup at router: duplicate"]
    assert report.summary["duplicates"] == 1 and report.summary["retransmissions"] == 0
    assert [s.dup_ack for s in report.segments[-2:]] == [False, True]


def test_an_old_duplicate_replayed_into_a_new_incarnation_is_out_of_window(runs):
    report = build(runs["old-duplicate"])
    replay = report.segments[-2]

    assert [c.incarnation for c in report.connections] == [0, 1]
    assert replay.incarnation == 1 and replay.origin == "router" and replay.out_of_window
    assert replay.label.startswith("PSH ACK seq=-")  # from before connection 2's ISN
    assert not any(s.out_of_window for s in report.segments if s is not replay)


def test_the_timeline_merges_segments_states_steps_and_rules_in_time_order(runs):
    timeline = load(runs["lost-final-ack"])
    kinds = [e.kind for e in timeline.events]

    assert [e.t for e in timeline.events] == sorted(e.t for e in timeline.events)
    assert {"segment", "state", "rule"} <= set(kinds)
    drop = next(e for e in timeline.events if e.kind == "rule")
    assert drop.text.startswith("rule lose_ack: drop") and drop.ref.transmission == 7
    assert next(e for e in timeline.events if e.kind == "segment" and e.ref.number == 7).text.endswith("(dropped at router)")


@pytest.mark.parametrize("name", ["normal-close", "lost-final-ack", "resets", "duplicated", "old-duplicate"])
def test_wiresharks_analysis_agrees_on_retransmissions_duplicate_acks_and_resets(runs, name):
    assert tshark.available(), "tshark is missing: apt-get install tshark (the README's test command does)"
    for pcap in sorted((runs[name] / "pcaps").glob("*.pcap")):
        for what, (theirs, ours) in tshark.compare(pcap).items():
            assert theirs == ours, f"{pcap.name} {what}: only Wireshark {theirs - ours}, only labctl {ours - theirs}"


# --- the ladder -----------------------------------------------------------------------------

def arrows(svg: str) -> list[dict]:
    root = ET.fromstring(svg)
    found = []
    for group in root.iter(f"{SVG}g"):
        if "segment" not in (group.get("class") or "").split():
            continue
        line = group.find(f"{SVG}polyline")
        points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        found.append({"id": group.get("data-segment"), "classes": group.get("class").split(), "points": points,
                      "cross": group.find(f"{SVG}path[@class='cross']") is not None, "title": group.find(f"{SVG}title").text})
    return found


def lanes_x(svg: str) -> dict[str, float]:
    root = ET.fromstring(svg)
    return {g.get("id").removeprefix("lane-"): float(g.find(f"{SVG}line").get("x1"))
            for g in root.iter(f"{SVG}g") if (g.get("class") or "") == "lane"}


def states_beside(svg: str) -> list[tuple[str, float, float]]:
    """(state, x of its pill's centre, y) for every state written on the ladder."""
    root = ET.fromstring(svg)
    found = []
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "state":
            text = group.find(f"{SVG}text")
            found.append((text.text, float(text.get("x")), float(text.get("y"))))
    return found


def test_the_ladder_draws_one_arrow_per_segment_from_sender_to_receiver_in_time_order(runs):
    report = build(runs["normal-close"])
    svg = ladder.svg(report)
    x = lanes_x(svg)
    drawn = arrows(svg)

    assert [a["id"] for a in drawn] == [s.id for s in report.segments]
    for arrow, segment in zip(drawn, report.segments):
        (x1, y1), (x2, y2) = arrow["points"][0], arrow["points"][-1]
        assert (x1, x2) == (x[segment.sender], x[segment.receiver])
        assert y2 > y1  # time runs downward: it arrives after it left
    starts = [a["points"][0][1] for a in drawn]
    assert starts == sorted(starts)
    # States beside their own line, in the order they happened, around the segments that caused them.
    states = states_beside(svg)
    client = [(s, y) for s, sx, y in states if sx < x["client"]]
    server = [(s, y) for s, sx, y in states if sx > x["server"]]
    assert [s for s, _ in client] == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    assert [s for s, _ in server] == ["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]
    y_state = dict(client)
    assert starts[0] > y_state["SYN_SENT"]
    assert y_state["FIN_WAIT1"] < starts[5] < y_state["FIN_WAIT2"]  # close() -> FIN_WAIT1 -> the FIN leaves
    assert y_state["TIME_WAIT"] > starts[7]  # the last ACK, then TIME_WAIT


def test_a_dropped_segment_ends_at_the_router_with_a_cross_and_a_retransmission_stands_out(runs):
    report = build(runs["lost-final-ack"])
    svg = ladder.svg(report)
    x = lanes_x(svg)
    drawn = {a["id"]: a for a in arrows(svg)}

    assert list(x) == ["client", "router", "server"]
    lost = drawn["s7"]
    assert lost["cross"] and "dropped" in lost["classes"]
    assert lost["points"][0][0] == x["client"] and lost["points"][-1][0] == x["router"]
    assert [a for a in drawn.values() if a["cross"]] == [lost]
    assert "retransmission" in drawn["s8"]["classes"]
    assert drawn["s8"]["points"][0][0] == x["server"] and drawn["s8"]["points"][-1][0] == x["client"]
    assert "dup ACK" in "".join(ET.fromstring(svg).find(f".//{SVG}g[@data-segment='s9']").itertext())


def test_a_copy_made_at_the_router_starts_at_the_router(runs):
    svg = ladder.svg(build(runs["duplicated"]))
    x = lanes_x(svg)
    copy = next(a for a in arrows(svg) if "duplicate" in a["classes"])

    assert copy["points"][0][0] == x["router"] and copy["points"][-1][0] == x["server"]


def test_the_text_ladder_shows_the_drop_and_the_states(runs):
    text = ladder.plain(ladder.text_lines(build(runs["lost-final-ack"])))

    assert "✕" in text and "#7 dropped at router" in text
    assert "#8 retransmission" in text and "TIME_WAIT" in text
    assert text.count("▶") + text.count("◀") + text.count("✕") == 10


def test_a_large_run_is_folded_to_its_remarkable_parts(tmp_path):
    run = synthetic.bulk(3000).write(tmp_path, judge=False)
    report = build(run)
    svg = ladder.svg(report)
    drawn = arrows(svg)

    assert len(report.segments) == 5 + 3000 * 2 + 1 + 3  # handshake and hello, data and ACKs, a retransmission, the close
    assert len(drawn) < ladder.FOLD_BUDGET
    ids = {a["id"] for a in drawn}
    lost = next(s for s in report.segments if s.fate == "dropped")
    again = next(s for s in report.segments if s.retransmission)
    assert {lost.id, again.id, report.segments[0].id, report.segments[-1].id} <= ids
    assert 'class="fold"' in svg and "segments folded" in svg
    assert len(json.loads(jsonreport.render(report))["segments"]) == len(report.segments)  # JSON keeps every one
    assert len(arrows(ladder.svg(report, budget=None))) == len(report.segments)


# --- formats -----------------------------------------------------------------------------------

def test_markdown_and_json_carry_every_expectation_with_its_verdict(runs):
    report = build(runs["lost-final-ack"])
    text = markdown.render(report)
    data = json.loads(jsonreport.render(report))

    assert len(report.verdicts) == 3
    for verdict in report.verdicts:
        row = next(line for line in text.splitlines() if line.startswith("| ") and markdown.cell(verdict.description) in line)
        assert ("✅ pass" if verdict.passed else "❌ **FAIL**") in row
    assert [(v["description"], v["passed"]) for v in data["verdicts"]] == [(v.description, v.passed) for v in report.verdicts]
    # The retransmitted FIN is the first expectation's evidence, by id, in both.
    assert data["verdicts"][0]["evidence"][0]["ref"] == "s8"
    assert "[#8](#s8)" in text and '<a id="s8"></a>' in text
    jsonschema.validate(data, jsonreport.schema())


def test_the_json_schema_is_valid_and_checks_comparisons_too(runs):
    schema = jsonreport.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    data = json.loads(jsonreport.render_compare(compare(build(runs["normal-close"]), build(runs["resets"]))))
    jsonschema.validate(data, schema)
    assert data["kind"] == "comparison" and data["differences"]["count"] > 0
    data["a"]["segments"][0]["flags"] = "XYZ"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)


def test_html_is_one_file_that_fetches_nothing(runs):
    report = build(runs["lost-final-ack"])
    page = html.render(report)

    assert "default-src 'none'" in page and "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert page.count('class="segment ') == len(report.segments)
    assert 'href="#seg-s8"' in page  # the verdict links to its evidence's arrow


def test_html_escapes_what_a_run_directory_says(tmp_path):
    run = synthetic.normal_close()
    run.name = "escape"
    directory = run.write(tmp_path)
    meta = json.loads((directory / "run.json").read_text())
    meta["description"] = "<script>alert(1)</script> & friends"
    (directory / "run.json").write_text(json.dumps(meta))
    page = html.render(build(directory))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in page


def test_the_terminal_report_shows_verdicts_ladder_and_states(runs):
    text = term.render(build(runs["lost-final-ack"]), width=140)

    assert "FAILED" not in text and "PASSED" in text
    assert "dropped at router" in text and "TIME_WAIT" in text and "Expectations" in text


def test_two_runs_compared_side_by_side_highlight_their_differences(runs):
    comparison = compare(build(runs["normal-close"]), build(runs["lost-final-ack"]))
    changed = {name for name, a, b in comparison.summary if a != b}

    assert {"segments", "retransmissions", "dropped", "duplicate_acks"} <= changed
    assert any(tag != "equal" and b and "DROPPED" in b for tag, a, b in comparison.flow)
    text = term.render_compare(comparison, width=160)
    assert "retransmissions" in text and "DROPPED" in text
    assert "**≠**" in markdown.render_compare(comparison)
    page = html.render_compare(comparison)
    assert page.count('class="differs"') >= len(changed) and page.count("<svg") >= 2


def test_the_html_report_loads_in_a_headless_browser_without_errors(runs):
    assert chromium(), "chromium is missing: apt-get install chromium (the README's test command does)"
    report = build(runs["lost-final-ack"])
    path = runs["lost-final-ack"] / "report.html"
    path.write_text(html.render(report))
    with Browser() as browser:
        loaded = browser.load(path, {"arrows": "document.querySelectorAll('svg.ladder g.segment').length",
                                     "crosses": "document.querySelectorAll('svg.ladder path.cross').length",
                                     "title": "document.title"}, screenshot=True)
    assert loaded.errors == []
    assert loaded.requests == [path.resolve().as_uri()]  # the page itself, nothing else
    assert loaded.values["arrows"] == len(report.segments) == 10
    assert loaded.values["crosses"] == 1
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "report-synthetic-lost-final-ack.png").write_bytes(loaded.screenshot)
    assert loaded.screenshot[:8] == b"\x89PNG\r\n\x1a\n"


# --- API and CLI --------------------------------------------------------------------------------

def labctl(*argv: str, root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABCTL_RESULTS": str(root)}
    return subprocess.run([sys.executable, "-m", "labctl", *argv], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A results tree as `labctl run` leaves it: results/<lab>/<run-id>/."""
    root = tmp_path_factory.mktemp("results")
    for i, make in enumerate((synthetic.normal_close, synthetic.lost_final_ack)):
        run = make()
        run.name = f"20260101-00000{i}-{run.name}-abcd"
        run.write(root / "synth")
    return root


def test_api_report_takes_a_lab_for_its_latest_run(results):
    data = json.loads(api.report(["synth"], format="json", root=results))
    assert data["run"]["dir"].endswith("-lost-final-ack-abcd")
    assert json.loads(api.report([], format="json", root=results))["run"]["dir"] == data["run"]["dir"]


def test_cli_report_writes_each_format_and_infers_it_from_the_file_name(results, tmp_path):
    run = next((results / "synth").glob("*normal-close*"))
    shown = labctl("report", str(run), root=results)
    assert shown.returncode == 0, shown.stderr
    assert "normal-close" in shown.stdout and "SYN seq=0" in shown.stdout
    for name, check in (("r.md", "## Expectations"), ("r.html", "<svg"), ("r.json", '"schema": "labctl-report"')):
        written = labctl("report", str(run), "-o", str(tmp_path / name), root=results)
        assert written.returncode == 0, written.stderr
        assert check in (tmp_path / name).read_text()
    compared = labctl("report", str(run), "synth", "-f", "json", root=results)
    assert json.loads(compared.stdout)["kind"] == "comparison"
    schema = labctl("report", "--schema", root=results)
    assert json.loads(schema.stdout)["$id"] == "urn:labctl:report:1"


def test_cli_report_errors_are_one_line_and_exit_2(results, tmp_path):
    for argv in (["nosuchlab"], [str(tmp_path)], ["synth", "-f", "pdf"], ["synth", "synth", "synth"]):
        result = labctl("report", *argv, root=results)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "error" in result.stderr


def test_a_report_names_the_lab_instance_its_run_was_on(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parent / "runs" / "lost-final-ack", run_dir)
    assert "(instance" not in build(run_dir).title  # the lab itself: no instance to name
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**run, "instance": "a"}))
    report = build(run_dir)
    assert report.title.startswith(f"{run['lab']} (instance a) / ")
    assert "(instance a)" in markdown.render(report) and "(instance a)" in html.render(report)
