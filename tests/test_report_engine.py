"""Reports of real runs of the teardown lab on the real engine: the analysis agrees
with Wireshark's on the same captures, the HTML opens cleanly in a real browser,
and the ladder says what the captures say."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from labctl import api
from labctl.report import html, jsonreport, ladder, markdown
from labctl.report.model import build

from . import tshark
from .browser import Browser, chromium
from .test_report import ARTIFACTS, arrows, lanes_x, states_beside

pytestmark = pytest.mark.engine

SCENARIOS = Path(__file__).resolve().parent.parent / "labs" / "teardown" / "scenarios"
# normal-close, plus the teardown scenarios that make retransmissions and resets (when the lab has them).
PLAIN = [s for s in ("normal-close", "lost-final-ack", "linger-abort") if (SCENARIOS / f"{s}.yaml").exists()]


@pytest.fixture(scope="module")
def runs(engine, node_image, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    results = api.run("teardown", PLAIN, root=root, engine=engine)
    if (SCENARIOS / "fin-to-closed.yaml").exists():
        results += api.run("teardown", ["fin-to-closed"], {"method": "kill"}, root=root, engine=engine)
    yield {r.scenario.split("[")[0].split(",")[0]: r.path for r in results}
    engine.destroy("teardown")


def packets(pcap: Path, display_filter: str, *fields: str) -> list[list[str]]:
    argv = ["tshark", "-n", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-E", "separator=|"]
    for field in fields:
        argv += ["-e", field]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("|") for line in out.splitlines()]


def test_wiresharks_analysis_agrees_with_labctls_on_every_capture(runs):
    assert tshark.available(), "tshark is missing: apt-get install tshark (the README's test command does)"
    totals = {"retransmissions": 0, "resets": 0}
    for name, run in runs.items():
        for pcap in sorted((run / "pcaps").glob("*.pcap")):
            for what, (theirs, ours) in tshark.compare(pcap).items():
                assert theirs == ours, f"{name} {pcap.name} {what}: only Wireshark {theirs - ours}, only labctl {ours - theirs}"
                if what in totals:
                    totals[what] += len(ours)
    if "lost-final-ack" in runs:
        assert totals["retransmissions"] > 0  # the comparison had something to compare
    if "linger-abort" in runs or "fin-to-closed" in runs:
        assert totals["resets"] > 0


def test_markdown_and_json_of_a_teardown_run_carry_every_expectation_with_its_verdict(runs):
    run = runs["normal-close"]
    recorded = json.loads((run / "verdicts.json").read_text())["verdicts"]
    expected = json.loads((run / "run.json").read_text())["expect"]
    report = build(run)
    text = markdown.render(report)
    data = json.loads(jsonreport.render(report))

    jsonschema.validate(data, jsonreport.schema())
    assert len(recorded) >= len(expected) == len(data["verdicts"][:len(expected)])
    for verdict, mine in zip(recorded, data["verdicts"]):
        assert (mine["description"], mine["passed"]) == (verdict["description"], verdict["passed"])
        row = next(line for line in text.splitlines() if markdown.cell(verdict["description"]) in line)
        assert ("✅ pass" if verdict["passed"] else "❌ **FAIL**") in row
    assert data["passed"] == all(v["passed"] for v in recorded)


@pytest.mark.parametrize("name", ["normal-close", "lost-final-ack"])
def test_the_html_report_opens_in_a_headless_browser_with_one_arrow_per_segment(runs, name):
    if name not in runs:
        pytest.fail(f"the teardown lab has no {name} scenario")
    assert chromium(), "chromium is missing: apt-get install chromium (the README's test command does)"
    run = runs[name]
    report = build(run)
    page = run / "report.html"
    page.write_text(html.render(report))
    with Browser() as browser:
        loaded = browser.load(page, {"arrows": "document.querySelectorAll('svg.ladder g.segment').length",
                                     "ids": "[...document.querySelectorAll('svg.ladder g.segment')].map(g => g.dataset.segment)"},
                              screenshot=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"report-{name}.png").write_bytes(loaded.screenshot)
    assert loaded.errors == []
    assert loaded.requests == [page.resolve().as_uri()]
    # Counted independently: every packet each endpoint's own capture saw it send.
    sent = sum(len(packets(run / "pcaps" / f"{node}-{iface}.pcap", f"tcp && ip.src == {address.split('/')[0]}", "frame.number"))
               for node in ("client", "server") for iface, address in report.run["nodes"][node]["interfaces"].items())
    assert loaded.values["arrows"] == len(report.segments) == sent
    assert loaded.values["ids"] == [s.id for s in report.segments]


def test_the_normal_close_ladder_matches_the_clients_capture_and_the_kernels_states(runs):
    run = runs["normal-close"]
    report = build(run)
    svg = ladder.svg(report)
    x = lanes_x(svg)
    client_ip = report.run["nodes"]["client"]["interfaces"]["left"].split("/")[0]

    assert list(x) == ["client", "server"]  # the router only forwarded: no lane for it
    # Every arrow, in order, is a packet of the client's capture, in the same direction with the same flags.
    wire = [("client" if src == client_ip else "server", flags.replace("·", "").strip())
            for src, flags in packets(run / "pcaps" / "client-left.pcap", "tcp", "ip.src", "tcp.flags.str")]
    drawn = arrows(svg)
    letters = {"S": "S", "F": "F", "R": "R", "P": "P", "A": "A"}
    ours = [(x_to_lane(a["points"][0][0], x), "".join(sorted(c for c in report.segment(a["id"]).flags if c in letters)))
            for a in drawn]
    assert ours == [(who, "".join(sorted(c for c in flags if c in letters))) for who, flags in wire]
    for a in drawn:
        segment = report.segment(a["id"])
        assert a["points"][-1][0] == x[segment.receiver] and a["points"][-1][1] > a["points"][0][1]
    # The client's states, beside its line, in the order the kernel's tracepoints (and sampling) saw them.
    kernel = [r["newstate"] for r in map(json.loads, (run / "states.jsonl").read_text().splitlines())
              if r.get("source") == "tracepoint" and r.get("node") == "client" and ":5000" in r["remote"]]
    shown = [s for s, sx, _ in states_beside(svg) if sx < x["client"]]
    assert shown == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"]
    assert [s for s in kernel if s != "CLOSE"] == shown[:-1]  # TIME_WAIT comes from sampling (DESIGN.md)


def test_the_lost_final_ack_ladder_crosses_out_the_ack_at_the_router(runs):
    if "lost-final-ack" not in runs:
        pytest.fail("the teardown lab has no lost-final-ack scenario")
    run = runs["lost-final-ack"]
    report = build(run)
    svg = ladder.svg(report)
    x = lanes_x(svg)
    crossed = [a for a in arrows(svg) if a["cross"]]

    assert list(x) == ["client", "router", "server"]
    assert len(crossed) == 1 and crossed[0]["points"][-1][0] == x["router"]
    lost = report.segment(crossed[0]["id"])
    assert (lost.sender, lost.flags, lost.dropped_after) == ("client", "A", "router")
    # Independently: the router's left capture has that packet, its right capture and the server's do not.
    for pcap, expected in (("client-left", 1), ("router-left", 1), ("router-right", 0), ("server-right", 0)):
        found = packets(run / "pcaps" / f"{pcap}.pcap", f"ip.id == {lost.ip_id} && ip.src == {lost.src.split(':')[0]}", "frame.number")
        assert len(found) == expected, pcap
    # The server's FIN comes again and stands out; Wireshark calls it a retransmission at the server too.
    fins = [s for s in report.segments if s.sender == "server" and "F" in s.flags]
    assert [f.retransmission for f in fins] == [False, True]
    again = next(a for a in arrows(svg) if a["id"] == fins[1].id)
    assert "retransmission" in again["classes"] and again["points"][0][0] == x["server"]
    flagged = packets(run / "pcaps" / "server-right.pcap", "tcp.analysis.retransmission && tcp.flags.fin == 1", "frame.number")
    assert len(flagged) == 1


def x_to_lane(x: float, lanes: dict[str, float]) -> str:
    return next(name for name, lx in lanes.items() if abs(lx - x) < 0.5)
