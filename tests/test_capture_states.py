"""TCP states replayed from each endpoint's own capture (analyze/endpoint.py), and merged with
tracepoints and sampling (analyze/states.py). Synthetic pcaps (tests/synthetic.py); no Docker.

Times are ms after synthetic.T0. A segment the client sends is in the client's capture at its
time and in the server's three hops (0.12 ms) later; the other way round for the server's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.analyze.verdicts import RunView, judge

from . import synthetic
from .synthetic import HOP, T0

NO_TRACEPOINTS = {"tracepoints": False, "tracepoints_unavailable": "tracefs is not mounted"}
ARRIVE = 3 * HOP * 1000  # ms from one end's capture to the other's


def connect(run: synthetic.Run, t: float = 10.0) -> float:
    """A handshake and one data segment, segments only (no kernel states)."""
    run.send(t, "client", "S", 0, window=64240)
    run.send(t + 0.3, "server", "SA", 0, 1, window=65160)
    run.send(t + 0.6, "client", "A", 1, 1)
    run.send(t + 5, "client", "PA", 1, 1, b"hello")
    run.send(t + 5.3, "server", "A", 1, 6)
    return t + 10


def ms(value: float) -> float:
    return round(value, 2)


def timeline(directory: Path, node: str, index: int = 0):
    return [tl for tl in RunView(directory).timelines if tl.node == node][index]


def seen(directory: Path, node: str, index: int = 0) -> list[tuple[str, float]]:
    """(state, ms after T0) from the merged timeline."""
    return [(t.state, round((t.t - T0) * 1000, 2)) for t in timeline(directory, node, index).transitions]


def written(run: synthetic.Run, tmp_path: Path) -> Path:
    run.observers = run.observers if run.states else NO_TRACEPOINTS
    return run.write(tmp_path, judge=False)


def test_a_normal_close_on_both_sides_to_the_packet(tmp_path):
    run = synthetic.Run("normal")
    t = connect(run)
    run.send(t, "client", "FA", 6, 1)
    run.send(t + 0.3, "server", "A", 1, 7)
    run.send(t + 20, "server", "FA", 1, 7)
    run.send(t + 20.3, "client", "A", 7, 2)
    directory = written(run, tmp_path)
    a = ARRIVE
    assert seen(directory, "client") == [("SYN_SENT", 10.0), ("ESTABLISHED", ms(10.3 + a)), ("FIN_WAIT1", 20.0), ("FIN_WAIT2", ms(20.3 + a)),
                                         ("TIME_WAIT", ms(40.0 + a))]
    assert seen(directory, "server") == [("SYN_RECV", ms(10.0 + a)), ("ESTABLISHED", ms(10.6 + a)), ("CLOSE_WAIT", ms(20.0 + a)),
                                         ("LAST_ACK", 40.0), ("CLOSED", ms(40.3 + a))]
    client = timeline(directory, "client")
    assert client.observed_by == ("capture",) and all(t.sources == ("capture",) for t in client.transitions)
    assert client.transitions[-1].why == "received FIN"


def test_a_fin_that_acknowledges_ours_passes_fin_wait2_for_no_time(tmp_path):
    run = synthetic.Run("fin-ack")
    t = connect(run)
    run.send(t, "client", "FA", 6, 1)
    run.send(t + 0.3, "server", "FA", 1, 7)  # the server closes at once: its FIN carries the ACK of ours
    run.send(t + 0.6, "client", "A", 7, 2)
    directory = written(run, tmp_path)
    assert seen(directory, "client")[-3:] == [("FIN_WAIT1", 20.0), ("FIN_WAIT2", ms(20.3 + ARRIVE)), ("TIME_WAIT", ms(20.3 + ARRIVE))]
    assert seen(directory, "server")[-3:] == [("CLOSE_WAIT", ms(20.0 + ARRIVE)), ("LAST_ACK", 20.3), ("CLOSED", ms(20.6 + ARRIVE))]


def test_a_simultaneous_close_goes_through_closing_on_both_sides(tmp_path):
    run = synthetic.Run("simultaneous")
    t = connect(run)
    run.send(t, "client", "FA", 6, 1)
    run.send(t, "server", "FA", 1, 6)  # both FINs cross: neither acknowledges the other's
    run.send(t + 0.2, "client", "A", 7, 2)
    run.send(t + 0.2, "server", "A", 2, 7)
    directory = written(run, tmp_path)
    a = ARRIVE
    assert seen(directory, "client")[-3:] == [("FIN_WAIT1", 20.0), ("CLOSING", ms(20.0 + a)), ("TIME_WAIT", ms(20.2 + a))]
    assert seen(directory, "server")[-3:] == [("FIN_WAIT1", 20.0), ("CLOSING", ms(20.0 + a)), ("TIME_WAIT", ms(20.2 + a))]


def close_to(run: synthetic.Run, state: str, t: float) -> tuple[float, int, int]:
    """Bring the client to ``state``; (time, client's next seq, server's next seq)."""
    if state == "ESTABLISHED":
        return t, 6, 1
    if state in ("FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT"):
        run.send(t, "client", "FA", 6, 1)
        if state == "FIN_WAIT1":
            return t + 1, 7, 1
        run.send(t + 0.3, "server", "A", 1, 7)
        if state == "FIN_WAIT2":
            return t + 1, 7, 1
        run.send(t + 0.6, "server", "FA", 1, 7)
        run.send(t + 0.9, "client", "A", 7, 2)
        return t + 1, 7, 2
    if state in ("CLOSE_WAIT", "LAST_ACK"):
        run.send(t, "server", "FA", 1, 6)
        run.send(t + 0.3, "client", "A", 6, 2)
        if state == "LAST_ACK":
            run.send(t + 0.6, "client", "FA", 6, 2)
        return t + 1, 7 if state == "LAST_ACK" else 6, 2
    raise AssertionError(state)


@pytest.mark.parametrize("state", ["ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"])
def test_an_rst_received_in_each_state_closes_the_socket(tmp_path, state):
    run = synthetic.Run(f"rst-{state}")
    t, mine, theirs = close_to(run, state, connect(run))
    run.send(t, "server", "R", theirs, wscale=None)  # exactly at RCV.NXT: acceptable (RFC 5961 3.2)
    states = seen(written(run, tmp_path), "client")
    assert states[-2:] == [(state, states[-2][1]), ("CLOSED", round(t + ARRIVE, 2))]
    # TIME_WAIT too: Linux lets an RST end it (net.ipv4.tcp_rfc1337=0).


def time_wait_then_rst(run: synthetic.Run) -> float:
    """The client in TIME_WAIT, then a stale ACK of the server's arrives behind its FIN (reordered on
    the way), the client's TIME_WAIT answers it, and the server, closed by then, resets: seen in the
    teardown lab's timewait-reuse runs."""
    t, _, _ = close_to(run, "TIME_WAIT", connect(run))
    run.send(t, "server", "A", 1, 7)          # the server's ACK of our FIN, late
    run.send(t + 0.1, "client", "A", 7, 2)    # TIME_WAIT repeats its ACK
    run.send(t + 0.2, "server", "R", 2, wscale=None)  # no socket any more: RST at the client's RCV.NXT
    return t + 0.2


@pytest.mark.parametrize("recorded, step, survives", [
    (None, None, False),   # a run that recorded no sysctls: Linux's default, 0
    ("0", None, False),
    ("1", None, True),
    ("0", "1", True),      # a sysctl step turned it on before the RST
    ("1", "0", False),
])
def test_an_rst_in_time_wait_follows_the_nodes_tcp_rfc1337(tmp_path, recorded, step, survives):
    run = synthetic.Run("rfc1337")
    if recorded is not None:
        run.observers = {**NO_TRACEPOINTS, "sysctls": {"client": {"net.ipv4.tcp_rfc1337": recorded}, "server": {}}}
    if step is not None:
        run.step(1, "sysctl", "client", {"net.ipv4.tcp_rfc1337": step}, result={"previous": {}})
    rst = time_wait_then_rst(run)
    directory = run.write(tmp_path, judge=False) if recorded is not None else written(run, tmp_path)
    states = seen(directory, "client")
    if survives:
        assert states[-1][0] == "TIME_WAIT"
    else:
        assert states[-2:] == [("TIME_WAIT", states[-2][1]), ("CLOSED", round(rst + ARRIVE, 2))]
        assert timeline(directory, "client").transitions[-1].why == "received RST (TIME-WAIT assassination, tcp_rfc1337=0)"


def test_a_run_records_each_nodes_tcp_sysctls_as_it_starts():
    from labctl.agent import actor, protocol

    values = actor.tcp_sysctls()  # this host's, as a node's actor reads its own
    assert set(values) <= set(protocol.TCP_SYSCTLS) and "net.ipv4.tcp_rfc1337" in values
    assert protocol.Ready.from_json({"ready": True, "node": "n", "observers": {}, "pid": 1, "sysctls": values}).sysctls == values


def test_an_rst_off_the_next_sequence_number_is_ignored(tmp_path):
    run = synthetic.Run("rst-blind")
    t = connect(run)
    run.send(t, "server", "R", 1000, wscale=None)  # in the window, not exact: a challenge ACK, no reset
    assert seen(written(run, tmp_path), "client")[-1][0] == "ESTABLISHED"


def test_a_refused_syn_and_a_reset_handshake(tmp_path):
    run = synthetic.Run("refused")
    run.send(10, "client", "S", 0, window=64240)
    run.send(10.3, "server", "RA", 0, 1, wscale=None)  # nothing listens
    directory = written(run, tmp_path)
    assert seen(directory, "client") == [("SYN_SENT", 10.0), ("CLOSED", round(10.3 + ARRIVE, 2))]
    assert not [tl for tl in RunView(directory).timelines if tl.node == "server"]  # no socket was ever there


def test_rst_sent_from_syn_recv_closes_the_request_socket(tmp_path):
    run = synthetic.Run("syn-recv-rst")
    run.send(10, "client", "S", 0, window=64240)
    run.send(10.3, "server", "SA", 0, 1, window=65160)
    run.send(10.6, "client", "R", 1, wscale=None)
    directory = written(run, tmp_path)
    assert seen(directory, "server") == [("SYN_RECV", round(10 + ARRIVE, 2)), ("CLOSED", round(10.6 + ARRIVE, 2))]


def test_so_linger_zero_aborts_with_an_rst_and_no_time_wait(tmp_path):
    run = synthetic.Run("linger-abort")
    t = connect(run)
    run.send(t, "client", "RA", 6, 1)  # close() with SO_LINGER {1, 0}
    directory = written(run, tmp_path)
    assert seen(directory, "client")[-2:] == [("ESTABLISHED", seen(directory, "client")[-2][1]), ("CLOSED", 20.0)]
    assert seen(directory, "server")[-2:] == [("ESTABLISHED", seen(directory, "server")[-2][1]), ("CLOSED", round(20 + ARRIVE, 2))]
    assert timeline(directory, "client").transitions[-1].why == "sent RST (abort)"


def test_a_lost_final_ack_keeps_the_server_in_last_ack_until_the_fin_is_answered_from_time_wait(tmp_path):
    run = synthetic.Run("lost-final-ack")
    t = connect(run)
    run.send(t, "client", "FA", 6, 1)
    run.send(t + 0.3, "server", "A", 1, 7)
    run.send(t + 20, "server", "FA", 1, 7)
    run.send(t + 20.3, "client", "A", 7, 2, reach=2)  # dropped at the router
    run.send(t + 220, "server", "FA", 1, 7)  # the RTO: the same FIN again
    run.send(t + 220.3, "client", "A", 7, 2)  # TIME_WAIT answers it
    directory = written(run, tmp_path)
    assert seen(directory, "client")[-1] == ("TIME_WAIT", round(40 + ARRIVE, 2))  # the retransmitted FIN changes nothing
    server = timeline(directory, "server")
    assert seen(directory, "server")[-2:] == [("LAST_ACK", 40.0), ("CLOSED", round(240.3 + ARRIVE, 2))]
    assert [round(held, 4) for state, _, held in server.durations() if state == "LAST_ACK"] == [round(0.2003 + ARRIVE / 1000, 4)]


def test_a_fin_behind_a_lost_segment_counts_when_the_gap_is_filled(tmp_path):
    run = synthetic.Run("gap")
    t = connect(run)
    run.send(t, "client", "PA", 6, 1, b"lost!", reach=2)
    run.send(t + 1, "client", "FA", 11, 1)  # arrives first, out of order
    run.send(t + 1.3, "server", "A", 1, 6)  # a duplicate ACK: still waiting for byte 6
    run.send(t + 200, "client", "PA", 6, 1, b"lost!")  # the retransmission fills the gap
    run.send(t + 200.3, "server", "A", 1, 12)
    assert seen(written(run, tmp_path), "server")[-1] == ("CLOSE_WAIT", round(220 + ARRIVE, 2))


def test_a_fin_answered_with_rst_met_no_socket(tmp_path):
    """fin-to-closed: the client's TIME_WAIT socket was destroyed before the FIN came back."""
    run = synthetic.Run("fin-to-closed")
    t = connect(run)
    t, _, _ = close_to(run, "TIME_WAIT", t)
    run.send(t + 200, "server", "FA", 1, 7)  # the server's FIN again
    run.send(t + 200.2, "client", "R", 7, wscale=None)  # no socket: a reply RST
    last = timeline(written(run, tmp_path), "client").transitions[-1]
    assert (last.state, last.before, round((last.t - T0) * 1000, 2)) == ("CLOSED", True, 221.2)


# --- merging with tracepoints and sampling -------------------------------------------------

def test_without_tracepoints_states_shorter_than_a_sample_come_from_the_capture(tmp_path):
    run = synthetic.Run("sampled")
    t = connect(run)
    run.sample(12, "client", "ESTABLISHED")
    run.sample(t + 5, "client", "FIN_WAIT1")
    run.send(t + 4, "client", "FA", 6, 1)
    run.send(t + 4.3, "server", "A", 1, 7)  # FIN_WAIT2 from 24.4 ms...
    run.send(t + 6, "server", "FA", 1, 7)  # ... to 26.1 ms: shorter than the 5 ms sample
    run.send(t + 6.3, "client", "A", 7, 2)
    run.sample(t + 9, "client", "TIME_WAIT", timewait=True, expires_ms=59997)
    run.observers = NO_TRACEPOINTS
    directory = run.write(tmp_path, judge=False)
    client = timeline(directory, "client")
    assert [(t.state, t.sources) for t in client.transitions] == [
        ("SYN_SENT", ("capture",)), ("ESTABLISHED", ("capture", "sample")), ("FIN_WAIT1", ("capture", "sample")),
        ("FIN_WAIT2", ("capture",)), ("TIME_WAIT", ("capture", "sample"))]
    assert [round((t.t - T0) * 1000, 2) for t in client.transitions][2:] == [24.0, round(24.3 + ARRIVE, 2), round(26 + ARRIVE, 2)]
    assert client.transitions[-1].timer_ms == 59997 and not client.disagreements


def test_tracepoints_and_capture_agree_and_a_socket_carries_both(tmp_path):
    run = synthetic.normal_close()
    directory = run.write(tmp_path, judge=False)
    client = timeline(directory, "client")
    assert [t.sources for t in client.transitions] == [("tracepoint", "capture")] * 4 + [("tracepoint", "capture", "sample")]
    assert not client.disagreements


def test_a_disagreement_beyond_the_captures_precision_is_kept_not_hidden(tmp_path):
    run = synthetic.Run("disagree")
    t = synthetic.handshake(run)
    run.state(t + 50, "client", "ESTABLISHED", "FIN_WAIT1")  # the kernel says 50 ms before the FIN left
    run.send(t + 100, "client", "FA", 6, 1)
    directory = run.write(tmp_path, judge=False)
    client = timeline(directory, "client")
    assert client.states[-1] == "FIN_WAIT1" and client.transitions[-1].at["tracepoint"] == pytest.approx(T0 + (t + 50) / 1000)
    [disagreement] = client.disagreements
    assert disagreement.state == "FIN_WAIT1" and "50.0 ms apart" in disagreement.text


def test_a_capture_state_that_sampling_would_have_seen_and_did_not_is_refuted(tmp_path):
    """tcp_max_tw_buckets=0: the client ACKs the FIN as if entering TIME_WAIT, but no timewait socket is made."""
    run = synthetic.Run("no-tw")
    t = connect(run)
    run.sample(12, "client", "ESTABLISHED")
    run.send(t, "client", "FA", 6, 1)
    run.send(t + 0.3, "server", "A", 1, 7)
    run.sample(t + 2, "client", "FIN_WAIT2")
    run.send(t + 20, "server", "FA", 1, 7)
    run.send(t + 20.3, "client", "A", 7, 2)
    run.sample(t + 23, "client", "CLOSED", event="gone")
    run.send(t + 220, "server", "FA", 1, 7)
    run.send(t + 220.2, "client", "R", 7, wscale=None)
    run.observers = NO_TRACEPOINTS
    client = timeline(run.write(tmp_path, judge=False), "client")
    assert "TIME_WAIT" not in client.states and client.states[-1] == "CLOSED"
    assert any(d.state == "TIME_WAIT" and "sampling every 5.0 ms never saw it" in d.text for d in client.disagreements)


def test_an_orphaned_fin_wait2_lives_on_in_a_timewait_socket_until_it_is_gone(tmp_path):
    """close() without waiting for the peer's FIN: at the handoff the full socket's tracepoint reads
    FIN_WAIT2 -> CLOSE, but the connection stays in FIN_WAIT2 for tcp_fin_timeout (here 2 s)."""
    run = synthetic.Run("orphan")
    t = synthetic.handshake(run)
    run.state(t, "client", "ESTABLISHED", "FIN_WAIT1")
    run.send(t + 0.1, "client", "FA", 6, 1)
    run.send(t + 0.4, "server", "A", 1, 7)
    run.state(t + 0.5, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.sample(t + 3, "client", "FIN_WAIT2")
    run.state(t + 0.6, "client", "FIN_WAIT2", "CLOSE")  # the handoff
    run.sample(t + 4, "client", "FIN_WAIT2", timewait=True, expires_ms=1997)
    run.sample(t + 2000.6, "client", "CLOSED", event="gone")
    run.expect = [{"states": {"node": "client", "held": "FIN_WAIT2", "min": "1.9s", "max": "2.1s"}},
                  {"states": {"node": "client", "sequence": ["FIN_WAIT1", "FIN_WAIT2", "CLOSED"]}}]
    directory = run.write(tmp_path, judge=False)
    client = timeline(directory, "client")
    assert client.states == ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSED"]
    assert [v.outcome for v in judge(directory)] == ["pass", "pass"]


def test_an_orphan_from_an_older_run_without_the_timewait_flag(tmp_path):
    run = synthetic.Run("orphan-old")
    t = synthetic.handshake(run)
    run.state(t, "client", "ESTABLISHED", "FIN_WAIT1")
    run.send(t + 0.1, "client", "FA", 6, 1)
    run.send(t + 0.4, "server", "A", 1, 7)
    run.state(t + 0.5, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.sample(t + 3, "client", "FIN_WAIT2")
    run.state(t + 0.6, "client", "FIN_WAIT2", "CLOSE")
    run.sample(t + 2000.6, "client", "CLOSED", event="gone")
    for record in run.states:
        record.pop("timewait", None)  # the sampler before it flagged timewait sockets
    client = timeline(run.write(tmp_path, judge=False), "client")
    assert [(s, round(held, 2) if held else held) for s, _, held in client.durations()][-2:] == [("FIN_WAIT2", 2.0), ("CLOSED", None)]


def test_the_sampler_tells_a_timewait_sockets_fin_wait2_from_a_full_sockets():
    """inet_twsk_diag_fill reports a timewait socket's substate as its state, with timer 3."""
    import socket as sockets

    from labctl.agent import inetdiag

    def body(state: int, timer: int, inode: int) -> bytes:
        return inetdiag._MSG.pack(sockets.AF_INET, state, timer, 0, (40000).to_bytes(2, "big"), (5000).to_bytes(2, "big"),
                                  sockets.inet_aton("10.0.0.1") + bytes(12), sockets.inet_aton("10.0.0.2") + bytes(12), 0,
                                  (77).to_bytes(8, "little"), 59996, 0, 0, 0, inode)

    orphan = inetdiag.parse_socket(body(5, 3, 0))
    full = inetdiag.parse_socket(body(5, 2, 4242))
    assert (orphan["state"], orphan["timewait"], orphan["expires_ms"]) == ("FIN_WAIT2", True, 59996)
    assert (full["state"], full["timewait"], full["cookie"]) == ("FIN_WAIT2", False, 77)


def test_a_fin_behind_unacknowledged_data_only_bounds_the_close(tmp_path):
    """close() moves to FIN_WAIT1 at once; the FIN leaves when the data before it may (here after 30 ms)."""
    run = synthetic.Run("queued-fin")
    t = synthetic.handshake(run)
    run.state(t, "client", "ESTABLISHED", "FIN_WAIT1")
    run.send(t + 1, "client", "PA", 6, 1, b"x" * 100)
    run.send(t + 30, "client", "FA", 106, 1)  # 30 ms after close(): the data is still not acknowledged
    run.send(t + 30.3, "server", "A", 1, 107)
    client = timeline(run.write(tmp_path, judge=False), "client")
    fin_wait1 = client.transitions[2]
    assert (fin_wait1.state, fin_wait1.sources, fin_wait1.t) == ("FIN_WAIT1", ("tracepoint", "capture"), pytest.approx(T0 + t / 1000))
    assert not client.disagreements


def test_a_time_wait_shorter_than_a_sample_is_decided_by_the_kill_that_ended_it(tmp_path):
    """fin-to-closed[method=kill]: the client's TIME_WAIT lasts under a millisecond, until a kill_socket
    step destroys it. Tracepoints show FIN_WAIT2 -> CLOSE (the handoff), sampling never sees it;
    the capture shows it begin (the server's FIN) and the step's reply names the socket it destroyed."""
    run = synthetic.Run("kill-tw")
    t = synthetic.handshake(run)
    run.state(t, "client", "ESTABLISHED", "FIN_WAIT1")
    run.send(t + 0.1, "client", "FA", 6, 1)
    run.send(t + 0.4, "server", "FA", 1, 7)
    run.state(t + 0.4 + ARRIVE, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.state(t + 0.42 + ARRIVE, "client", "FIN_WAIT2", "CLOSE")  # the handoff to the timewait socket
    run.send(t + 0.45 + ARRIVE, "client", "A", 7, 2)
    run.sample(t - 2, "client", "ESTABLISHED")
    run.step(t + 1.3, "kill_socket", "client", {"remote_port": run.server_port, "state": "time-wait"}, name="kill",
             result={"returned": 1, "killed": [f"0 0 10.250.1.1:{run.client_port} 10.250.2.10:{run.server_port}"]},
             duration=6)
    run.sample(t + 8, "client", "CLOSED", event="gone")
    run.expect = [{"states": {"node": "client", "sequence": ["FIN_WAIT2", "TIME_WAIT", "CLOSED"]}}]
    directory = run.write(tmp_path, judge=False)
    assert [v.outcome for v in judge(directory)] == ["pass"]
    client = timeline(directory, "client")
    assert client.disagreements == []
    tw, closed = client.transitions[-2:]
    assert (tw.state, closed.state) == ("TIME_WAIT", "CLOSED")
    assert round((closed.t - T0) * 1000, 2) == round(t + 1.3, 2)  # from the step's start, not the handoff's CLOSE
    kill = next(step for step in run.steps if step["kind"] == "kill_socket")
    assert closed.why == f"destroyed by step {kill['index'] + 1} (kill_socket, ss -K)"


def test_a_kill_that_found_no_socket_in_that_state_ends_nothing(tmp_path):
    run = synthetic.Run("kill-none")
    t = synthetic.handshake(run)
    run.step(t + 1, "kill_socket", "client", {"remote_port": run.server_port, "state": "time-wait"},
             result={"returned": 1, "killed": [f"0 0 10.250.1.1:{run.client_port} 10.250.2.10:{run.server_port}"]})
    directory = written(run, tmp_path)  # the client is ESTABLISHED: a time-wait kill cannot have been this socket
    assert seen(directory, "client")[-1][0] == "ESTABLISHED"


@pytest.mark.parametrize("buckets, last", [("0", "CLOSED"), ("131072", "TIME_WAIT")])
def test_without_timewait_buckets_the_fin_closes_the_socket_instead_of_time_wait(tmp_path, buckets, last):
    # fin-to-closed[method=no_tw_buckets]: the sysctl step sets tcp_max_tw_buckets=0 on the client first.
    run = synthetic.Run(f"buckets-{buckets}")
    run.step(1, "sysctl", "client", {"net.ipv4.tcp_max_tw_buckets": buckets}, result={"previous": {}})
    t, _, _ = close_to(run, "TIME_WAIT", connect(run))
    directory = written(run, tmp_path)
    assert [state for state, _ in seen(directory, "client")][-3:] == ["FIN_WAIT1", "FIN_WAIT2", last]


def test_a_timewait_socket_seen_gone_after_the_reconnect_ends_before_the_new_connection(tmp_path):
    """old-duplicate: TIME_WAIT destroyed (ss -K), the same 4-tuple connected again at once; the sampler
    sees the old timewait socket gone only in a sample after the new SYN. That end belongs before the
    new connection, not in the middle of it (it cut connection 2 in two, and its ESTABLISHED was
    reported as a capture-vs-tracepoint disagreement)."""
    run = synthetic.Run("reconnect")
    run.state(10, "client", "CLOSE", "SYN_SENT")
    run.state(10.5, "client", "SYN_SENT", "ESTABLISHED")
    run.state(12, "client", "ESTABLISHED", "FIN_WAIT1")
    run.state(12.5, "client", "FIN_WAIT1", "FIN_WAIT2")
    run.state(13, "client", "FIN_WAIT2", "CLOSE")          # the handoff to the timewait socket
    run.sample(14, "client", "TIME_WAIT", timewait=True, expires_ms=59999)
    run.state(20, "client", "CLOSE", "SYN_SENT")            # connection 2, same 4-tuple
    run.sample(20.4, "client", "CLOSED", event="gone", timewait=True)   # the old one, seen gone only now
    run.state(20.5, "client", "SYN_SENT", "ESTABLISHED")
    run.sample(21, "client", "SYN_SENT")
    for record in run.states[-1:]:
        record["cookie"] = 8  # the new connection's socket
    directory = written(run, tmp_path)
    timelines = [tl for tl in RunView(directory).timelines if tl.node == "client"]
    assert [tl.states for tl in timelines] == [["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSED"],
                                               ["SYN_SENT", "ESTABLISHED"]]
    assert timelines[0].transitions[-1].before and timelines[0].transitions[-1].t < T0 + 0.020
