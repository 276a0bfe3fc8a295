"""The one TCP vocabulary (labctl/agent/tcp.py) that packet rules in nodes and the
analysis share: flags, the header and its options, patterns, incarnations. No Docker."""

from __future__ import annotations

import socket

import dpkt

from labctl.agent import rules, tcp
from labctl.analyze import segments as analysis


def packet(flags: str = "A", seq: int = 1000, ack: int = 2000, data: bytes = b"", opts: bytes = b"",
           src: str = "10.0.0.1", dst: str = "10.0.0.2", sport: int = 40000, dport: int = 5000) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=tcp.flag_bits(flags), win=502, opts=opts, data=data)
    segment.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=6, ttl=64, id=7, data=segment)
    ip.len = 20 + len(bytes(segment))
    return bytes(ip)


TIMESTAMPS = b"\x01\x01\x08\x0a" + (123).to_bytes(4, "big") + (456).to_bytes(4, "big")


def test_flags_read_as_letters_and_words():
    assert tcp.flag_string(0x11) == "FA" and tcp.flag_string(0x12) == "SA"
    assert tcp.flag_words("FA") == "FIN ACK" and tcp.flag_words("SA") == "SYN ACK" and tcp.flag_words("") == "none"
    assert tcp.flag_bits("FA") == 0x11


def test_flag_patterns_at_least_exactly_and_never():
    assert tcp.flags_match("F", "FA") and not tcp.flags_match("F", "A")
    assert tcp.flags_match("=A", "A") and not tcp.flags_match("=A", "PA") and tcp.flags_match("=.", "A")
    assert tcp.flags_match("!R", "FA") and not tcp.flags_match("!R", "RA")
    assert tcp.flags_match(None, "S") and tcp.flags_match("fa", "FA")


def test_the_header_and_its_options():
    raw = packet("PA", data=b"hello", opts=b"\x02\x04\x05\xb4\x01\x03\x03\x0f" + TIMESTAMPS)
    header = tcp.parse(raw)
    assert (header.src, header.sport, header.dst, header.dport, header.flags) == ("10.0.0.1", 40000, "10.0.0.2", 5000, "PA")
    assert (header.seq, header.ack, header.length, header.payload) == (1000, 2000, 5, b"hello")
    assert (header.mss, header.wscale, header.timestamps) == (1460, 14, (123, 456))  # a shift of 15 is read as 14


def test_a_malformed_option_ends_the_walk_as_in_the_kernel():
    raw = packet(opts=b"\x08\x01\x00\x00" + TIMESTAMPS)  # an option of size 1 cannot be
    assert tcp.parse(raw).timestamps is None
    assert [kind for kind, _, _ in tcp.options(b"\x01\x01\x00\x08\x0a", 0, 5)] == []


def test_not_tcp_or_cut_is_not_parsed():
    raw = packet()
    assert tcp.parse(raw[:30]) is None
    udp = bytearray(raw)
    udp[9] = 17
    assert tcp.parse(bytes(udp)) is None


def test_agent_and_analysis_read_the_same_packet_alike():
    raw = packet("FA", data=b"x" * 3, opts=TIMESTAMPS)
    ours = tcp.parse(raw)
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800, data=raw))
    seen = analysis._decode(1.0, frame, dpkt.pcap.DLT_EN10MB, "n", "eth0")
    via_dpkt = analysis._decode_dpkt(1.0, frame, dpkt.pcap.DLT_EN10MB, "n", "eth0")
    for segment in (seen, via_dpkt):
        assert (segment.flags, segment.seq, segment.ack, segment.length, segment.timestamps) == (
            ours.flags, ours.seq, ours.ack, ours.length, ours.timestamps)


def test_a_pattern_names_ends_flags_ports_payload_and_relative_numbers():
    header = tcp.parse(packet("PA", data=b"OLD-DATA"))
    assert tcp.matches({"flags": "P", "dport": 5000, "payload": "OLD"}, header, sources={"10.0.0.1"})
    assert not tcp.matches({}, header, targets={"10.0.0.9"})
    assert not tcp.matches({"payload": False}, header)
    assert tcp.matches({"seq": 6, "ack": 1}, header, relative=lambda: (6, 1))
    assert not tcp.matches({"seq": 6}, header)  # relative numbers not known: no match
    assert not tcp.matches({"ack": 1}, tcp.parse(packet("R")), relative=lambda: (6, 1))  # no ACK flag, no ack


def test_incarnations_from_syns_and_an_old_duplicate_belongs_to_its_own():
    book = tcp.Incarnations()
    a, b = ("10.0.0.1", 40000), ("10.0.0.2", 5000)
    assert book.see(*a, *b, "A", 5) is None  # mid-connection: nothing known without first_sight
    first = book.see(*a, *b, "S", 1000)
    book.see(*b, *a, "SA", 900_000)
    book.see(*a, *b, "S", 1000)  # a retransmitted SYN: the same incarnation
    second = book.see(*a, *b, "S", 500_000_000)
    book.see(*b, *a, "SA", 7_000_000)
    assert [i.index for i in book.of(*a, *b)] == [0, 1] and book.newest(*b, *a) is second
    assert book.by_sequence(*a, *b, 1006) is first and book.by_sequence(*a, *b, 500_000_006) is second
    assert first.relative(*a, *b, "PA", 1006, 900_001) == (6, 1)
    assert second.relative(*b, *a, "S", 7_000_000, 0) == (0, None)


def test_a_simultaneous_open_is_one_incarnation():
    book = tcp.Incarnations()
    a, b = ("10.0.0.1", 40000), ("10.0.0.2", 5000)
    book.see(*a, *b, "S", 1)
    book.see(*b, *a, "S", 2)
    assert len(book.of(*a, *b)) == 1 and book.newest(*a, *b).isn == {a: 1, b: 2}


def test_first_sight_starts_an_incarnation_mid_connection():
    book = tcp.Incarnations(first_sight=True)
    found = book.see("10.0.0.2", 5000, "10.0.0.1", 40000, "A", 77, 3.0)
    assert (found.client, found.isn, found.first) == (("10.0.0.2", 5000), {("10.0.0.2", 5000): 77}, 3.0)


def test_agent_rules_match_through_the_shared_module():
    tracker = rules.Connections()
    syn = tcp.parse(packet("S", seq=1000, ack=0))
    synack = tcp.parse(packet("SA", seq=900_000, ack=1001, src="10.0.0.2", dst="10.0.0.1", sport=5000, dport=40000))
    tracker.see(syn)
    tracker.see(synack)
    final_ack = tcp.parse(packet("A", seq=1007, ack=900_002))
    assert tracker.relative(final_ack) == {"incarnation": 0, "rel_seq": 7, "rel_ack": 2}
    assert rules.matches({"from": ["10.0.0.1"], "flags": "=A", "seq": 7, "ack": 2}, final_ack, tracker)
    assert not rules.matches({"from": ["10.0.0.2"], "flags": "=A"}, final_ack, tracker)


def test_a_rewrite_removes_timestamps_and_keeps_the_checksum_right():
    raw = packet("PA", data=b"abc", opts=TIMESTAMPS)
    out = rules.rewrite(raw, seq_delta=10, strip_timestamps=True)
    header = tcp.parse(out)
    assert (header.seq, header.timestamps, header.payload, len(out)) == (1010, None, b"abc", len(raw))
    assert rules.tcp_checksum(bytearray(out), 20) == 0  # summed with its own checksum, a right one gives zero
