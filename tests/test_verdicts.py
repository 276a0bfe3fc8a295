"""Verdicts: typed, honest (pass, fail, undecided with its reason), readable, and read back from
old run directories. Synthetic runs (tests/synthetic.py); no Docker."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from typer.testing import CliRunner

from labctl import api, cli
from labctl.analyze.results import SegmentRef, SocketRef, StepRef, Verdict, exit_status
from labctl.analyze.verdicts import judge
from labctl.report import jsonreport, markdown
from labctl.report.model import build
from labctl.run import RunResult

from . import synthetic

NO_TRACEPOINTS = {"tracepoints": False, "tracepoints_unavailable": "/sys/kernel/tracing is not mounted",
                  "nodes": {"client": {"captures": ["left"], "sampler": True}, "server": {"captures": ["right"], "sampler": True},
                            "router": {"captures": ["left", "right"], "sampler": True}}}


def sampled_close(server_capture: bool = True) -> synthetic.Run:
    """A normal close seen by sampling every 5 ms, no tracepoints: the server's CLOSE_WAIT lasts 0.9 ms."""
    run = synthetic.Run("sampled-close", observers=json.loads(json.dumps(NO_TRACEPOINTS)))
    run.send(10, "client", "S", 0, window=64240)
    run.send(10.3, "server", "SA", 0, 1, window=65160)
    run.send(10.6, "client", "A", 1, 1)
    run.sample(12, "client", "ESTABLISHED")
    run.sample(12, "server", "ESTABLISHED")
    run.send(20, "client", "FA", 1, 1)
    run.send(20.3, "server", "A", 1, 2)
    run.send(21.2, "server", "FA", 1, 2)  # the server closes 0.9 ms later: CLOSE_WAIT is never sampled
    run.sample(26, "server", "LAST_ACK")
    run.send(227.5, "client", "A", 2, 2)
    run.sample(230, "server", "CLOSED", event="gone")
    run.sample(25, "client", "TIME_WAIT", timewait=True, expires_ms=59990)
    run.expect = [{"states": {"node": "server", "sequence": ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSED"]}},
                  {"events": {"event": "tcp_send_reset", "node": "router", "count": 0}},
                  {"segments": {"from": "client", "flags": "F", "count": 1}},
                  {"events": {"event": "tcp_receive_reset", "node": "server", "count": 0}}]
    if not server_capture:
        run.records[("server", "right")] = []
        run.observers["nodes"]["server"]["captures"] = []
    return run


def test_with_a_capture_a_state_shorter_than_a_sample_is_still_seen(tmp_path):
    directory = sampled_close().write(tmp_path, judge=False)
    states, events, fins, resets = judge(directory)
    assert states.outcome == "pass"
    assert states.observed.startswith("10.250.2.10:5000->10.250.1.1:40000: SYN_RECV 0.6 ms -> ESTABLISHED 9.4 ms -> CLOSE_WAIT 1.1 ms -> LAST_ACK 206 ms -> CLOSED")
    assert events.outcome == "undecided" and "tracepoints were not available" in events.reason
    assert "/sys/kernel/tracing is not mounted" in events.reason and "no capture shows tcp_send_reset on router" in events.reason
    # No tracepoints, but the server's capture shows every RST it accepted: none.
    assert (resets.outcome, resets.observed) == ("pass", "0 seen, from the capture (tracepoints were not available: "
                                                         "/sys/kernel/tracing is not mounted)")
    assert fins.outcome == "pass" and fins.observed == f"1 seen: #{fins.evidence[0].transmission}"


def test_without_tracepoints_or_capture_a_short_state_is_undecided_not_failed(tmp_path):
    run = sampled_close(server_capture=False)
    (tmp_path / "a").mkdir()
    directory = run.write(tmp_path / "a", judge=False)
    (directory / "pcaps" / "server-right.pcap").unlink()
    states = judge(directory)[0]
    assert states.outcome == "undecided", states.observed
    assert states.observed == ("10.250.2.10:5000->10.250.1.1:40000: ESTABLISHED 14 ms -> LAST_ACK 204 ms -> CLOSED; "
                               "CLOSE_WAIT not seen: shorter than the 5.0 ms sample, no capture on server and no tracepoints")
    assert states.reason == "CLOSE_WAIT not seen: shorter than the 5.0 ms sample, no capture on server and no tracepoints"


def test_a_state_the_capture_would_show_and_did_not_is_a_fail(tmp_path):
    run = sampled_close()
    run.expect = [{"states": {"node": "server", "sequence": ["ESTABLISHED", "CLOSING"]}}]
    [verdict] = judge(run.write(tmp_path, judge=False))
    assert verdict.outcome == "fail" and verdict.observed.endswith("; CLOSING not seen")


def test_exit_status_tells_a_failed_lab_from_a_machine_that_could_not_see():
    passed = Verdict(0, "segments", "d", "pass", "e", "o")
    failed = Verdict(1, "segments", "d", "fail", "e", "o")
    undecided = Verdict(2, "events", "d", "undecided", "e", "o", reason="no tracepoints")
    assert exit_status([passed]) == 0
    assert exit_status([passed, undecided]) == 3
    assert exit_status([passed, undecided, failed]) == 1
    assert exit_status([passed], complete=False) == 1


def test_resets_from_the_capture_when_tracepoints_are_missing(tmp_path):
    run = synthetic.resets()
    run.states = []
    run.observers = json.loads(json.dumps(NO_TRACEPOINTS))
    run.expect = [{"events": {"event": "tcp_receive_reset", "node": "server", "count": 2}},  # the abort, and the reply in LAST_ACK
                  {"events": {"event": "tcp_receive_reset", "node": "client", "count": 1}},
                  {"events": {"event": "tcp_send_reset", "node": "client", "count": 2}}]
    verdicts = judge(run.write(tmp_path, judge=False))
    assert [v.outcome for v in verdicts] == ["pass", "pass", "pass"], [v.observed for v in verdicts]


def test_labctl_run_exits_3_when_nothing_failed_and_something_was_undecided(monkeypatch, tmp_path):
    directory = sampled_close().write(tmp_path, judge=False)
    result = RunResult(directory, "sampled-close", "complete", judge(directory))
    monkeypatch.setattr(api, "run", lambda *args, **kwargs: [result])
    shown = CliRunner().invoke(cli.app, ["run", "whatever"])
    assert shown.exit_code == 3, shown.output
    assert "undecided" in shown.output and "tracepoints were not available" in shown.output
    as_json = CliRunner().invoke(cli.app, ["run", "whatever", "--json"])
    [outcome] = json.loads(as_json.output)
    assert as_json.exit_code == 3 and outcome["outcome"] == "undecided"
    assert [v["outcome"] for v in outcome["verdicts"]] == ["pass", "undecided", "pass", "pass"]


def test_verdicts_round_trip_through_json_with_typed_references(tmp_path):
    directory = synthetic.lost_final_ack().write(tmp_path)
    verdicts = judge(directory)
    again = [Verdict.from_json(json.loads(json.dumps(v.to_json()))) for v in verdicts]
    assert again == verdicts
    assert all(isinstance(e, SegmentRef) for e in verdicts[0].evidence)


def test_a_verdicts_file_from_before_outcomes_still_makes_a_report(tmp_path):
    """An older labctl wrote dicts with `passed` only, and evidence joined by capture point and time."""
    directory = synthetic.normal_close().write(tmp_path, judge=False)
    old = [{"index": 0, "kind": "segments", "name": None, "spec": {}, "description": "exactly 1 [F] segments from client to server",
            "passed": True, "expected": "exactly 1", "observed": "1 seen",
            "evidence": [{"kind": "segment", "t": synthetic.T0 + 0.0202, "at": "client/left", "transmission": 5, "summary": "FIN"}]},
           {"index": 1, "kind": "states", "name": None, "spec": {}, "description": "client states", "passed": False,
            "expected": "x", "observed": "y", "evidence": [{"kind": "states", "socket": "10.250.1.1:40000->10.250.2.10:5000",
                                                             "node": "client", "transitions": [{"t": synthetic.T0 + 0.0095, "state": "SYN_SENT",
                                                                                                "source": "tracepoint", "timer_ms": None}]}]},
           {"index": 2, "kind": "step", "name": None, "spec": {}, "description": "step", "passed": True, "expected": "", "observed": "ok",
            "evidence": [{"kind": "step", "index": 0, "t": synthetic.T0, "node": "client", "step": "connect", "ok": True, "errno": None,
                          "result": {}}]}]
    (directory / "verdicts.json").write_text(json.dumps({"schema_version": 1, "verdicts": old}))
    report = build(directory)
    assert [v.outcome for v in report.verdicts] == ["pass", "fail", "pass"]
    assert [e.ref for v in report.verdicts for e in v.evidence] == ["s5", "k1", "step1"]
    jsonschema.validate(jsonreport.report_json(report), jsonreport.schema())


def test_every_format_says_undecided_and_why(tmp_path):
    directory = sampled_close().write(tmp_path)  # judged, as a run records it
    report = build(directory)
    assert report.outcome == "undecided" and not report.passed and report.summary["undecided"] == 1
    text = markdown.render(report)
    assert "**UNDECIDED**" in text and "❔ undecided" in text and "tracepoints were not available" in text
    data = jsonreport.report_json(report)
    jsonschema.validate(data, jsonreport.schema())
    assert data["outcome"] == "undecided"
    events = [v for v in data["verdicts"] if v["kind"] == "events"]
    assert [(v["outcome"], bool(v["reason"])) for v in events] == [("undecided", True), ("pass", False)]
    states = data["verdicts"][0]
    assert states["details"]["sockets"][0]["states"][2]["state"] == "CLOSE_WAIT"
    assert states["evidence"][0]["data"]["transitions"][2]["sources"] == ["capture"]


def test_observed_never_shows_a_python_repr(tmp_path):
    runs = [synthetic.normal_close(), synthetic.lost_final_ack(), synthetic.resets(), sampled_close()]
    data_run = synthetic.normal_close()
    data_run.step(500, "recv", "server", {"sock": "s"}, name="got", result={"data": "hello"})
    data_run.expect = [{"data": {"step": "got", "equals": "hello"}}]
    for i, run in enumerate(runs + [data_run]):
        (tmp_path / str(i)).mkdir()
        for verdict in judge(run.write(tmp_path / str(i), judge=False)):
            assert "{'" not in verdict.observed and "[{" not in verdict.observed and "'t':" not in verdict.observed, verdict.observed
    [data] = judge(tmp_path / "4" / "normal-close")
    assert data.observed == 'received "hello" (5 bytes)' and data.description == 'data received by got equals "hello"'


def test_evidence_references_are_typed():
    ref = SocketRef("client", "10.0.0.1:1", "10.0.0.2:2")
    assert ref.text == "client 10.0.0.1:1->10.0.0.2:2: no states"
    assert StepRef(0, "client", "connect", 1.0, False, "ECONNREFUSED").text == "step 1 (connect on client): failed ECONNREFUSED"
