"""The Python API as a user writes it, on the real engine: only the public names of labctl."""

from __future__ import annotations

import pytest

from labctl import Lab, UserError, Verdict, api

pytestmark = pytest.mark.engine


def test_lost_final_ack_from_python(tmp_path):
    lab = Lab.load("teardown")
    with lab.up(results=tmp_path) as running:
        ping = running.exec("client", ["ping", "-c1", "-W2", "server"])
        assert ping.exit_code == 0, ping.stdout + ping.stderr
        run = running.run("lost-final-ack")

    assert run.verdicts and all(isinstance(v, Verdict) for v in run.verdicts)
    assert [v.outcome for v in run.verdicts] == ["pass"] * len(run.verdicts), run.explain()
    assert run.passed and run.exit_status == 0
    # What the kernel did, as typed facts: the server's FIN went twice, the second a retransmission ...
    [first, again] = run.find_segments(from_="server", to="client", flags="F")
    assert not first.retransmission and again.retransmission and again.seq == first.seq
    # ... because the router dropped the client's first final ACK.
    [lost] = [tx for tx in run.transmissions if tx.dropped]
    assert lost.sender == "client" and lost.dropped_at == "router" and "A" in lost.first.flags
    [server] = [s for s in run.sockets if s.node == "server" and s.local_port == 5002 and "LAST_ACK" in s.states]
    assert server.states[-1] == "CLOSED"
    assert "lost-final-ack" in run.report("md")


def test_an_exception_in_the_block_leaves_nothing_up(tmp_path):
    with pytest.raises(RuntimeError, match="inside the block"):
        with Lab.load("teardown").up(results=tmp_path) as running:
            assert {node.name for node in running.status().nodes} == {"client", "router", "server"}
            raise RuntimeError("inside the block")
    # Found by its labels on the engine: no container, no network of the lab is left.
    with pytest.raises(UserError, match="not up"):
        api.status("teardown")
