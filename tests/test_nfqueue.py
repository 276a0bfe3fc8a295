"""The NFQUEUE binding against hand-built netlink bytes: what the kernel sends, what we must send back.

Header fields of netlink (nlmsghdr, nlattr) are in host byte order; nfnetlink values
are big-endian. The bytes below are written out field by field, not with the module's
own structs, so a wrong layout in the module cannot agree with itself.
"""

from __future__ import annotations

import errno
import socket
import sys

import pytest

from labctl.agent import nfqueue as nfq


def h16(n: int) -> bytes:
    return n.to_bytes(2, sys.byteorder)


def h32(n: int, signed: bool = False) -> bytes:
    return n.to_bytes(4, sys.byteorder, signed=signed)


def be16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def be32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def nla(kind: int, value: bytes, pad: bool = True) -> bytes:
    body = h16(4 + len(value)) + h16(kind) + value
    return body + b"\0" * ((-len(body)) % 4 if pad else 0)


def nlmsg(kind: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    return h32(16 + len(body)) + h16(kind) + h16(flags) + h32(seq) + h32(pid) + body


QUEUE_PACKET = 3 << 8 | 0      # NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
QUEUE_VERDICT = 3 << 8 | 1
QUEUE_CONFIG = 3 << 8 | 2
QUEUE_VERDICT_BATCH = 3 << 8 | 3
IP_PACKET = bytes.fromhex("450000540001400040010000" "0a0a0101" "0a0a0202") + b"\x08\x00\xf7\xff" + bytes(60)


def packet_message(packet_id: int, *, queue: int = 5, payload: bytes = IP_PACKET, mark: int | None = None,
                   timestamp: tuple[int, int] | None = None, cap_len: int | None = None, hook: int = 4) -> bytes:
    """A packet message laid out as nfqnl_build_packet_message() does: header first, payload last, unpadded."""
    attrs = nla(1, be32(packet_id) + be16(0x0800) + bytes([hook]))      # NFQA_PACKET_HDR, 7 bytes + 1 pad
    attrs += nla(5, be32(7))                                             # NFQA_IFINDEX_INDEV
    attrs += nla(6, be32(9))                                             # NFQA_IFINDEX_OUTDEV
    if mark is not None:
        attrs += nla(3, be32(mark))                                      # NFQA_MARK
    if timestamp is not None:
        attrs += nla(4, timestamp[0].to_bytes(8, "big") + timestamp[1].to_bytes(8, "big"))
    if cap_len is not None:
        attrs += nla(13, be32(cap_len))                                  # NFQA_CAP_LEN
    attrs += nla(10, payload, pad=False)                                 # NFQA_PAYLOAD
    return nlmsg(QUEUE_PACKET, 0, 0, bytes([socket.AF_INET, 0]) + be16(queue) + attrs)


def ack(seq: int, code: int = 0) -> bytes:
    return nlmsg(2, 0, seq, h32(-code, signed=True) + bytes(16))        # NLMSG_ERROR + the request's header


# --- what we send -------------------------------------------------------------------

def test_bind_config_carries_command_copy_mode_length_and_flags_in_one_message():
    msg = nfq.config_message(5, copy_range=0xFFFF, maxlen=2000, flags=nfq.NFQA_CFG_F_FAIL_OPEN,
                             flags_mask=nfq.NFQA_CFG_F_FAIL_OPEN, seq=9)
    expected = nlmsg(QUEUE_CONFIG, 0x1 | 0x4, 9,                                   # NLM_F_REQUEST | NLM_F_ACK
                     bytes([0, 0]) + be16(5)                                      # AF_UNSPEC, NFNETLINK_V0, queue 5
                     + nla(1, bytes([1, 0]) + be16(0))                             # NFQA_CFG_CMD: BIND
                     + nla(2, be32(0xFFFF) + bytes([2]))                           # NFQA_CFG_PARAMS: range, COPY_PACKET
                     + nla(3, be32(2000))                                          # NFQA_CFG_QUEUE_MAXLEN
                     + nla(4, be32(1))                                             # NFQA_CFG_MASK
                     + nla(5, be32(1)))                                            # NFQA_CFG_FLAGS: FAIL_OPEN
    assert msg == expected


def test_flags_always_travel_with_a_mask():
    # The kernel refuses NFQA_CFG_FLAGS without NFQA_CFG_MASK (EINVAL).
    msg = nfq.config_message(1, command=None, copy_mode=None, flags=0, flags_mask=nfq.NFQA_CFG_F_FAIL_OPEN, ack=False)
    body = msg[20:]
    assert body == nla(4, be32(1)) + nla(5, be32(0))
    assert msg[6:8] == h16(0x1)   # no NLM_F_ACK asked for


def test_unbind_names_the_queue_and_nothing_else():
    msg = nfq.config_message(300, command=nfq.NFQNL_CFG_CMD_UNBIND, copy_mode=None, ack=False)
    assert msg == nlmsg(QUEUE_CONFIG, 0x1, 0, bytes([0, 0]) + be16(300) + nla(1, bytes([2, 0]) + be16(0)))


def test_accept_verdict():
    assert nfq.verdict_message(5, 0xDEADBEEF, nfq.NF_ACCEPT, seq=3) == nlmsg(
        QUEUE_VERDICT, 0x1, 3, bytes([0, 0]) + be16(5) + nla(2, be32(1) + be32(0xDEADBEEF)))


def test_verdict_with_mark_and_replacement_payload():
    payload = b"\x45" + bytes(20)  # 21 bytes: the attribute needs 3 bytes of padding
    msg = nfq.verdict_message(5, 42, nfq.NF_ACCEPT, payload=payload, mark=0x4C43)
    assert msg == nlmsg(QUEUE_VERDICT, 0x1, 0, bytes([0, 0]) + be16(5)
                        + nla(2, be32(1) + be32(42)) + nla(3, be32(0x4C43)) + nla(10, payload))
    assert len(msg) % 4 == 0


def test_batch_verdict_names_the_highest_id():
    assert nfq.batch_verdict_message(7, 1000, nfq.NF_DROP) == nlmsg(
        QUEUE_VERDICT_BATCH, 0x1, 0, bytes([0, 0]) + be16(7) + nla(2, be32(0) + be32(1000)))


# --- what the kernel sends --------------------------------------------------------------

def test_packet_message_parses_to_every_field():
    data = packet_message(77, mark=0x10, timestamp=(1_700_000_000, 250_000), hook=4)
    [(kind, _flags, start, end)] = list(nfq.messages(data))
    assert kind == QUEUE_PACKET and (start, end) == (0, len(data))
    packet = nfq.parse_packet(data, start, end)
    assert packet.id == 77
    assert packet.hw_protocol == 0x0800
    assert nfq.HOOKS[packet.hook] == "POSTROUTING"
    assert packet.queue == 5 and packet.family == socket.AF_INET
    assert (packet.indev, packet.outdev, packet.mark) == (7, 9, 0x10)
    assert packet.timestamp - 1_700_000_000 == pytest.approx(0.25, abs=1e-6)
    assert packet.payload == IP_PACKET
    assert not packet.truncated


def test_optional_attributes_absent_stay_empty():
    packet = nfq.parse_packet(packet_message(1), 0, len(packet_message(1)))
    assert packet.mark == 0 and packet.timestamp is None and packet.cap_len is None


def test_truncated_payload_is_flagged_by_cap_len():
    data = packet_message(3, payload=IP_PACKET[:40], cap_len=len(IP_PACKET))
    packet = nfq.parse_packet(data, 0, len(data))
    assert packet.truncated and packet.cap_len == 84
    assert nfq.payload_bounds(data, 0, len(data))[2] is True


def test_several_messages_in_one_datagram_each_found_at_its_aligned_offset():
    # The first payload is 85 bytes: the next message starts after 3 bytes of alignment.
    first = packet_message(1, payload=IP_PACKET + b"x")
    second = packet_message(2, queue=6)
    data = first + b"\0" * ((-len(first)) % 4) + second + ack(4, errno.ENOENT)
    found = list(nfq.messages(data))
    assert [kind for kind, *_ in found] == [QUEUE_PACKET, QUEUE_PACKET, 2]
    assert [nfq.parse_packet(data, s, e).id for k, _, s, e in found if k == QUEUE_PACKET] == [1, 2]
    assert nfq.packet_queue(data, found[1][2]) == 6
    assert nfq.parse_error(data, found[2][2]) == errno.ENOENT


def test_messages_stop_at_a_truncated_datagram():
    data = packet_message(1) + packet_message(2)
    cut = len(packet_message(1)) + 30
    assert [s for _, _, s, _ in nfq.messages(data, cut)] == [0]


def test_fast_id_and_payload_bounds_agree_with_the_full_parse():
    data = bytes(8) + packet_message(0xFFFFFFFE, mark=1)   # a message that does not start at 0
    start, end = 8, len(data)
    assert nfq.packet_id(data, start) == 0xFFFFFFFE
    lo, hi, truncated = nfq.payload_bounds(data, start, end)
    assert data[lo:hi] == IP_PACKET and not truncated


def test_attribute_flag_bits_are_not_part_of_the_type():
    nested = nla(0x8000 | 11, nla(3, be32(8)))          # NLA_F_NESTED | NFQA_CT
    assert [k for k, _, _ in nfq.attributes(nested, 0, len(nested))] == [11]


def test_packet_without_header_is_refused():
    data = nlmsg(QUEUE_PACKET, 0, 0, bytes([2, 0]) + be16(1) + nla(10, IP_PACKET, pad=False))
    with pytest.raises(ValueError, match="NFQA_PACKET_HDR"):
        nfq.parse_packet(data, 0, len(data))


def test_packet_ids_compare_as_serial_numbers_across_the_wrap():
    assert nfq.id_after(5, 4) and not nfq.id_after(4, 5)
    assert nfq.id_after(2, 0xFFFFFFF0)          # wrapped: 2 comes after 0xFFFFFFF0
    assert not nfq.id_after(7, 7)


def test_kernel_counters_line():
    lines = ["    1    227     3 2 65531     4     5      139  1", "32769    227     0 2 65531     0     0       11  1"]
    assert nfq.parse_kernel_counters(lines, 1) == {"portid": 227, "waiting": 3, "copy_mode": 2, "copy_range": 65531,
                                                   "queue_dropped": 4, "user_dropped": 5, "id_sequence": 139}
    assert nfq.parse_kernel_counters(lines, 2) is None


# --- the queue object, with a socketpair playing the kernel ---------------------------------

class Kernel:
    """The far end of a datagram socketpair; it answers the bind before the queue is made."""

    def __init__(self):
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def send(self, data: bytes) -> None:
        self.theirs.send(data)

    def received(self) -> list[bytes]:
        self.theirs.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.theirs.recv(1 << 16))
            except BlockingIOError:
                return out


@pytest.fixture
def kernel():
    k = Kernel()
    yield k
    k.theirs.close()


def test_bind_waits_for_the_ack_and_keeps_packets_that_came_first(kernel):
    kernel.send(packet_message(1, queue=5))  # the rule was already there: a packet beats the ack
    kernel.send(ack(1))
    q = nfq.NfQueue(5, sock=kernel.ours)
    [request] = kernel.received()
    assert request[4:6] == h16(QUEUE_CONFIG) and request[8:12] == h32(1)
    assert [p.id for p in q.packets()] == [1]
    assert q.packets() == []   # nothing more waiting, and no blocking


def test_bind_refused_names_the_reason(kernel):
    kernel.send(ack(1, errno.EBUSY))
    with pytest.raises(nfq.NetlinkError, match="already holds this queue"):
        nfq.NfQueue(5, sock=kernel.ours)


def test_verdicts_leave_together_in_one_datagram_in_order(kernel):
    kernel.send(ack(1))
    q = nfq.NfQueue(5, sock=kernel.ours)
    kernel.received()
    q.verdict(10)
    q.verdict(11, nfq.NF_DROP)
    q.verdict(12, mark=0x4C43)
    q.verdict(13, payload=IP_PACKET)
    q.verdict_batch(20)
    assert kernel.received() == []      # buffered until flush
    q.flush()
    [datagram] = kernel.received()
    assert datagram == (nfq.verdict_message(5, 10) + nfq.verdict_message(5, 11, nfq.NF_DROP)
                        + nfq.verdict_message(5, 12, mark=0x4C43) + nfq.verdict_message(5, 13, payload=IP_PACKET)
                        + nfq.batch_verdict_message(5, 20))


def test_verdicts_for_a_second_queue_on_the_same_socket(kernel):
    kernel.send(ack(1))
    kernel.send(ack(2))
    q = nfq.NfQueue(5, sock=kernel.ours)
    q.bind(32773)
    kernel.received()
    q.verdict(1, queue=32773)
    q.flush()
    assert kernel.received() == [nfq.verdict_message(32773, 1)]
    assert q.numbers == [5, 32773]


def test_a_full_verdict_buffer_is_sent_before_it_overflows(kernel):
    kernel.send(ack(1))
    q = nfq.NfQueue(5, sock=kernel.ours, out_size=100)   # room for three 32-byte verdicts
    kernel.received()
    for pid in range(4):
        q.verdict(pid)
    assert kernel.received() == [b"".join(nfq.verdict_message(5, pid) for pid in range(3))]
    q.flush()
    assert kernel.received() == [nfq.verdict_message(5, 3)]


def test_verdict_errors_are_counted_not_raised(kernel):
    kernel.send(ack(1))
    q = nfq.NfQueue(5, sock=kernel.ours)
    kernel.send(ack(7, errno.ENOENT) + packet_message(8))
    assert [p.id for p in q.packets()] == [8]
    assert (q.verdict_errors, q.last_error) == (1, errno.ENOENT)


class OverrunSocket:
    """A socket whose next receive fails with ENOBUFS once, as when the kernel dropped packets for us."""

    def __init__(self, sock):
        self.sock, self.overrun = sock, True

    def recv_into(self, buf):
        if self.overrun:
            self.overrun = False
            raise OSError(errno.ENOBUFS, "No buffer space available")
        return self.sock.recv_into(buf)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_enobufs_is_counted_and_receiving_goes_on(kernel):
    kernel.send(ack(1))
    q = nfq.NfQueue(5, sock=kernel.ours)
    q.sock = OverrunSocket(q.sock)
    kernel.send(packet_message(9))
    assert [p.id for p in q.packets()] == [9]
    assert q.overruns == 1


def test_close_unbinds_every_queue(kernel):
    kernel.send(ack(1))
    kernel.send(ack(2))
    q = nfq.NfQueue(5, sock=kernel.ours)
    q.bind(6)
    kernel.received()
    q.verdict(3)
    q.close()
    sent = kernel.received()
    assert sent[0] == nfq.verdict_message(5, 3)   # held verdicts go first
    assert sent[1:] == [nfq.config_message(n, command=nfq.NFQNL_CFG_CMD_UNBIND, copy_mode=None, ack=False) for n in (5, 6)]
