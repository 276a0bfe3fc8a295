"""The shaper's decisions and verdicts, without a kernel: a fake queue records what would be sent.

The real thing runs in tests/test_shaper_engine.py; here each rule is checked on its own,
with the clock in the test's hands.
"""

from __future__ import annotations

import random
import statistics

import pytest

from labctl.agent import nfqueue as nfq
from labctl.agent import shaper as sh

from .test_nfqueue import IP_PACKET, Kernel, ack, packet_message

MAIN, NEW_Q = 1, 1 + sh.NEW_QUEUE_OFFSET


class FakeQueue:
    """Records verdicts, batch verdicts and flushes in order, as the kernel would receive them."""

    def __init__(self, log: list):
        self.number, self.numbers = MAIN, [MAIN, NEW_Q]
        self.log = log
        self.buffered = False
        self._backlog: list[bytes] = []
        self.overruns = self.verdict_errors = 0

    def verdict(self, pid, verdict=nfq.NF_ACCEPT, *, payload=None, mark=None, queue=None):
        self.log.append(("accept" if verdict == nfq.NF_ACCEPT else "drop", queue or MAIN, pid, payload))
        self.buffered = True

    def verdict_batch(self, max_id, verdict=nfq.NF_ACCEPT, *, mark=None, queue=None):
        self.log.append(("batch", queue or MAIN, max_id))
        self.buffered = True

    def flush(self):
        # Like NfQueue.flush: a send only when verdicts are buffered.
        if self.buffered:
            self.log.append(("flush",))
            self.buffered = False

    def note_error(self, data, start):
        self.verdict_errors += 1

    def close(self):
        pass


class FakeRaw:
    def __init__(self, log: list):
        self.log = log

    def sendto(self, packet, address):
        self.log.append(("raw", address[0], packet))

    def close(self):
        pass


def make_shaper(seed: int = 1, **config) -> tuple[sh.Shaper, list]:
    log: list = []
    shaper = sh.Shaper(FakeQueue(log), sh.parse_config(config), random.Random(seed), new_queue=NEW_Q)
    shaper.raw = FakeRaw(log)
    return shaper, log


def arrive(shaper: sh.Shaper, pid: int, at: float, *, queue: int = MAIN, payload: bytes = IP_PACKET) -> None:
    data = packet_message(pid, queue=queue, payload=payload)
    shaper._take(data, len(data), at)


def tick(shaper: sh.Shaper, at: float) -> None:
    """One turn of the daemon's loop after its reads: release what is due, then give the verdicts."""
    shaper.release_due(at)
    shaper._flush()


def icmp_echo(ident: int, seq: int, ttl: int = 63) -> bytes:
    return (bytes.fromhex("45000054") + bytes(4) + bytes([ttl, 1]) + bytes(2) + bytes([10, 0, 1, 1, 10, 0, 2, 2])
            + bytes([8, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + bytes(56))


# --- delay ---------------------------------------------------------------------------

def test_delayed_packets_leave_at_their_due_time_in_one_batch_verdict():
    shaper, log = make_shaper(delay_ms=50)
    for pid, at in ((1, 0.000), (2, 0.001), (3, 0.002)):
        arrive(shaper, pid, at)
    tick(shaper, 0.0499)
    assert log == []                                # nothing is due yet
    tick(shaper, 0.0505)
    assert log == [("batch", MAIN, 1), ("flush",)]  # 2 and 3 are still held: the batch stops at 1
    tick(shaper, 0.0530)
    assert log[2:] == [("batch", MAIN, 3), ("flush",)]
    assert shaper.stats.delayed == 3 and shaper.stats.delivered == 3
    assert shaper.lateness()["n"] == 3


def test_no_batch_verdict_while_an_older_packet_is_still_held():
    # With jitter, a younger packet can be due first: a batch up to its id would release the older one early.
    shaper, log = make_shaper(delay_ms=50)
    arrive(shaper, 1, 0.0)
    shaper.heap[0] = (0.090, 1)             # packet 1 drew a long delay
    arrive(shaper, 2, 0.001)
    tick(shaper, 0.052)
    assert log == [("accept", MAIN, 2, None), ("flush",)]
    tick(shaper, 0.091)
    assert log[2:] == [("batch", MAIN, 1), ("flush",)]


def test_zero_delay_accepts_at_once():
    shaper, log = make_shaper()
    arrive(shaper, 1, 0.0)
    arrive(shaper, 2, 0.0)
    shaper._flush()
    assert log == [("batch", MAIN, 2), ("flush",)]


def test_jitter_stays_within_its_bounds_and_reorders():
    shaper, log = make_shaper(seed=3, delay_ms=50, jitter_ms=10)
    for pid in range(1, 201):
        arrive(shaper, pid, pid * 0.001)
    delays = sorted(due - pid * 0.001 for due, pid in shaper.heap)
    assert 0.040 <= delays[0] and delays[-1] <= 0.060
    assert delays[-1] - delays[0] > 0.015      # the spread is really used
    shaper.release_all()
    accepted = [entry[2] for entry in log if entry[0] == "accept"]
    assert sorted(accepted) == list(range(1, 201)) and accepted != sorted(accepted)


def test_normal_jitter_has_the_configured_spread():
    fates = sh.Fates(sh.parse_config({"delay_ms": 50, "jitter_ms": 5, "distribution": "normal"}), random.Random(4))
    delays = [fates.next()[1] * 1000 for _ in range(4000)]
    assert statistics.mean(delays) == pytest.approx(50, abs=0.5)
    assert statistics.stdev(delays) == pytest.approx(5, rel=0.1)


def test_stopping_lets_every_held_packet_go_in_due_order():
    shaper, log = make_shaper(delay_ms=1000)
    arrive(shaper, 1, 0.0)
    arrive(shaper, 2, 0.1)
    shaper.release_all()
    assert log == [("batch", MAIN, 2), ("flush",)]
    assert shaper.heap == []


# --- loss, duplicates, corruption, reordering -------------------------------------------------

def test_lost_packets_are_dropped_at_once():
    shaper, log = make_shaper(seed=5, loss_pct=100)
    arrive(shaper, 1, 0.0)
    shaper._flush()
    assert log == [("drop", MAIN, 1, None), ("flush",)]
    assert shaper.stats.dropped == 1 and shaper.stats.delivered == 0


def test_a_duplicate_is_sent_after_its_original_with_the_same_bytes():
    shaper, log = make_shaper(delay_ms=10, duplicate_pct=100)
    arrive(shaper, 1, 0.0)
    tick(shaper, 0.011)
    assert log == [("batch", MAIN, 1), ("flush",), ("raw", "10.10.2.2", IP_PACKET)]
    assert shaper.stats.duplicated == 1


def test_duplicated_and_lost_goes_out_once_as_in_netem():
    shaper, log = make_shaper(duplicate_pct=100, loss_pct=100)
    arrive(shaper, 1, 0.0)
    shaper._flush()
    assert log == [("batch", MAIN, 1), ("flush",)]
    assert shaper.stats.dropped == 0 and shaper.stats.duplicated == 0


def test_a_corrupted_packet_differs_by_one_bit_after_the_ip_header():
    shaper, log = make_shaper(seed=9, corrupt_pct=100)
    arrive(shaper, 1, 0.0)
    shaper._flush()
    [(kind, queue, pid, payload), _] = log
    assert (kind, queue, pid) == ("accept", MAIN, 1)
    diff = [i for i, (a, b) in enumerate(zip(payload, IP_PACKET)) if a != b]
    assert len(diff) == 1 and diff[0] >= 20
    assert bin(payload[diff[0]] ^ IP_PACKET[diff[0]]).count("1") == 1
    assert shaper.stats.corrupted == 1


def test_flip_bit_leaves_the_header_and_needs_something_after_it():
    rng = random.Random(0)
    for _ in range(200):
        changed = sh.flip_bit(IP_PACKET, rng)
        assert changed[:20] == IP_PACKET[:20] and changed != IP_PACKET
    assert sh.flip_bit(IP_PACKET[:20], rng) is None
    with_options = bytes([0x46]) + IP_PACKET[1:20] + bytes(4) + b"payload"
    assert all(sh.flip_bit(with_options, rng)[:24] == with_options[:24] for _ in range(50))


def released_order(log: list, arrived: list[int]) -> list[int]:
    """The order packets left in, with each batch verdict expanded as the kernel applies it."""
    waiting, order = list(arrived), []
    for entry in log:
        if entry[0] == "accept":
            order.append(entry[2])
            waiting.remove(entry[2])
        elif entry[0] == "batch":
            order += [pid for pid in waiting if pid <= entry[2]]
            waiting = [pid for pid in waiting if pid > entry[2]]
    return order


def test_reordered_packets_overtake_the_delayed_ones():
    shaper, log = make_shaper(seed=2, delay_ms=20, reorder_pct=50)
    for pid in range(1, 41):
        arrive(shaper, pid, pid * 0.001)
        tick(shaper, pid * 0.001)
    tick(shaper, 1.0)
    order = released_order(log, list(range(1, 41)))
    assert sorted(order) == list(range(1, 41))
    overtaken = sum(1 for i, pid in enumerate(order) if any(later < pid for later in order[i + 1:]))
    assert overtaken > 0
    assert 10 <= shaper.stats.reordered <= 30 and shaper.stats.reordered + shaper.stats.delayed == 40
    # Every reordered packet left at its own arrival, while older ones were held.
    assert order[0] != 1 or shaper.stats.reordered == 0


def test_same_seed_same_fates_other_seed_other_fates():
    config = sh.parse_config({"delay_ms": 30, "jitter_ms": 5, "loss_pct": 20, "duplicate_pct": 5,
                              "reorder_pct": 10, "corrupt_pct": 3})

    def fates(seed):
        f = sh.Fates(config, random.Random(seed))
        return [f.next() for _ in range(300)]

    assert fates(11) == fates(11)
    assert fates(11) != fates(12)


@pytest.mark.parametrize("correlation", [0.0, 0.5, 0.9])
def test_correlated_chance_keeps_its_rate_and_has_its_correlation(correlation):
    chance = sh.Chance(0.2, correlation, random.Random(21))
    draws = [chance() for _ in range(40000)]
    assert sum(draws) / len(draws) == pytest.approx(0.2, abs=0.02)
    pairs = list(zip(draws, draws[1:]))
    after_hit = [b for a, b in pairs if a]
    # P(hit | hit) = p + c(1 - p)
    assert sum(after_hit) / len(after_hit) == pytest.approx(0.2 + correlation * 0.8, abs=0.03)


# --- conntrack: packets whose entry was unconfirmed when queued ------------------------------------

def test_later_unconfirmed_packets_of_a_flow_are_resent_after_the_first_confirms_it():
    shaper, log = make_shaper(delay_ms=50)
    for seq in (1, 2, 3):
        arrive(shaper, seq, seq * 0.010, queue=NEW_Q, payload=icmp_echo(7, seq))
    arrive(shaper, 4, 0.035, queue=NEW_Q, payload=icmp_echo(8, 1))     # another flow
    tick(shaper, 0.061)
    assert log == [("accept", NEW_Q, 1, None), ("flush",)]
    tick(shaper, 0.086)
    # 2 and 3 would meet the entry 1 confirmed and be dropped: their bytes go through the raw socket.
    assert log[2:] == [("drop", NEW_Q, 2, None), ("flush",), ("raw", "10.0.2.2", icmp_echo(7, 2)),
                       ("drop", NEW_Q, 3, None), ("flush",), ("raw", "10.0.2.2", icmp_echo(7, 3)),
                       ("accept", NEW_Q, 4, None), ("flush",)]
    assert shaper.stats.resent == 2 and shaper.stats.delivered == 4
    assert shaper.fresh == {} and shaper.fresh_pending == {} and shaper.fresh_confirmed == set()


def test_a_reordered_unconfirmed_packet_confirms_first_so_the_older_one_is_resent():
    shaper, log = make_shaper(delay_ms=50)
    arrive(shaper, 1, 0.0, queue=NEW_Q, payload=icmp_echo(7, 1))
    shaper.fates = sh.Fates(sh.parse_config({"delay_ms": 50, "reorder_pct": 100}), random.Random(0))
    arrive(shaper, 2, 0.001, queue=NEW_Q, payload=icmp_echo(7, 2))      # goes at once
    shaper._flush()
    tick(shaper, 0.051)
    assert log == [("accept", NEW_Q, 2, None), ("flush",),
                   ("drop", NEW_Q, 1, None), ("flush",), ("raw", "10.0.2.2", icmp_echo(7, 1))]


def test_flow_key_tells_flows_apart_as_conntrack_does():
    assert sh.flow_key(icmp_echo(7, 1)) == sh.flow_key(icmp_echo(7, 2))      # seq is not in the tuple
    assert sh.flow_key(icmp_echo(7, 1)) != sh.flow_key(icmp_echo(8, 1))      # the echo id is
    udp = lambda sport: bytes.fromhex("45000020000000004011000a0a000101" "0a000202") + sport.to_bytes(2, "big") + bytes(6)
    assert sh.flow_key(udp(1000)) != sh.flow_key(udp(1001))
    assert sh.flow_key(b"\x60" + bytes(39)) is None                        # IPv6: not ours


# --- configuration and rules --------------------------------------------------------------------

@pytest.mark.parametrize("config, message", [
    ({"delay": 5}, "unknown config key"),
    ({"loss_pct": 101}, "loss_pct must be in 0..100"),
    ({"delay_ms": -1}, "delay_ms must be in"),
    ({"jitter_ms": "5"}, "jitter_ms must be a number"),
    ({"loss_pct": True}, "loss_pct must be a number"),
    ({"distribution": "pareto"}, "distribution must be one of uniform, normal"),
    ({"reorder_pct": 10}, "reorder_pct needs delay_ms"),
    ({"limit": 0}, "limit must be a whole number"),
    ([], "config must be a JSON object"),
])
def test_bad_config_is_refused_with_the_key_named(config, message):
    with pytest.raises(sh.ConfigError, match=message):
        sh.parse_config(config)


def test_config_keys_and_defaults():
    imp = sh.parse_config({"delay_ms": 50, "jitter_ms": 2, "loss_pct": 1.5})
    assert (imp.delay_ms, imp.jitter_ms, imp.loss_pct, imp.distribution, imp.limit) == (50.0, 2.0, 1.5, "uniform", 10000)
    assert sh.Fates(sh.parse_config({"delay_ms": 50}), random.Random()).constant
    assert not sh.Fates(imp, random.Random()).constant


def test_read_config_names_where_it_came_from():
    with pytest.raises(sh.ConfigError, match=r"^/etc/x\.json: not JSON"):
        sh.read_config("{", "/etc/x.json")


def test_queue_rules_argv():
    assert sh.queue_rules("right", 3) == [
        ["iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "right", "-m", "mark", "!", "--mark", "0x4c43",
         "-m", "conntrack", "!", "--ctstatus", "CONFIRMED", "-j", "NFQUEUE", "--queue-num", "32771", "--queue-bypass"],
        ["iptables", "-w", "-t", "mangle", "-A", "POSTROUTING", "-o", "right", "-m", "mark", "!", "--mark", "0x4c43",
         "-j", "NFQUEUE", "--queue-num", "3", "--queue-bypass"],
    ]
    inserted = sh.queue_rules("left", 3, 0x99, action="-I")
    assert [rule[-2] for rule in inserted] == ["3", "32771"]   # inserted at the top one by one: the order still holds
    assert "0x99" in inserted[0]
    with pytest.raises(ValueError):
        sh.queue_rules("left", sh.NEW_QUEUE_OFFSET)


def test_command_line_errors_come_back_as_results(tmp_path):
    assert sh.main(["--queue", "1", "--config", '{"loss_pct": 200}']) == {
        "ok": False, "error": "--config: loss_pct must be in 0..100, not 200"}
    assert "no such file" in sh.main(["--queue", "1", "--config-file", str(tmp_path / "none.json")])["error"].lower()
    assert "0..32767" in sh.main(["--queue", "40000", "--config", "{}"])["error"]
    with pytest.raises(SystemExit):
        sh.main(["--queue", "1"])        # one of --config/--config-file is required


def test_reload_keeps_the_old_config_when_the_new_one_is_bad(tmp_path):
    path = tmp_path / "shaper.json"
    path.write_text('{"delay_ms": 10}')
    shaper, _ = make_shaper(delay_ms=5)
    shaper.config_file = str(path)
    shaper.log = lambda line: None
    shaper.reload()
    assert shaper.imp.delay_ms == 10 and shaper.stats.reloads == 1
    path.write_text('{"delay_ms": "soon"}')
    shaper.reload()
    assert shaper.imp.delay_ms == 10 and shaper.stats.reload_errors == 1


def test_packets_read_while_a_reload_sets_the_queue_length_still_get_their_verdict(tmp_path):
    kernel = Kernel()
    kernel.send(ack(1))
    queue = nfq.NfQueue(MAIN, sock=kernel.ours)
    kernel.received()
    path = tmp_path / "shaper.json"
    path.write_text('{"limit": 500}')
    shaper = sh.Shaper(queue, sh.parse_config({}), random.Random(1), new_queue=NEW_Q, config_file=str(path),
                       log=lambda line: None)
    kernel.send(packet_message(42, queue=MAIN))      # queued before the kernel answers the new length
    kernel.send(ack(2))

    shaper.reload()
    shaper._flush()

    assert kernel.received() == [nfq.config_message(MAIN, command=None, copy_mode=None, maxlen=500, seq=2),
                                 nfq.batch_verdict_message(MAIN, 42)]
    assert shaper.imp.limit == 500 and shaper.stats.seen == 1
    kernel.theirs.close()
