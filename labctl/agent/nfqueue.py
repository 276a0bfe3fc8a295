"""NFQUEUE in pure Python, over a raw netlink socket.

Why our own binding: nodes run Debian bookworm's python3 and nothing else.
No maintained Python binding for nfnetlink_queue is packaged in bookworm
(there is no python3-netfilterqueue there), and the image build has no
network inside containers, so a wheel from PyPI cannot be installed into
nodes. Talking netlink directly needs only the standard library: no C
extension, no compiler in the image, and the agent stays one directory of
.py files copied into every node.

Wire format (include/uapi/linux/netfilter/nfnetlink_queue.h, nfnetlink.h):

- Every message is ``nlmsghdr`` (length, type, flags, seq, portid; host byte
  order) + ``nfgenmsg`` (family u8, version u8, res_id be16 = queue number) +
  attributes. The type is ``NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_*``.
- Attributes are ``nlattr`` (length, type; host byte order) + value, padded
  to 4 bytes. Values of nfnetlink attributes are big-endian.
- The kernel puts ``NFQA_PACKET_HDR`` (packet id be32, hw protocol be16,
  hook u8; packed, 7 bytes) first in every packet message, and
  ``NFQA_PAYLOAD`` last, without padding after it.
- One packet per datagram in practice; the parser still walks every
  message of a datagram, since errors and acks may come several at once.

Kernel behaviour this module relies on:

- ``NFQNL_CFG_CMD_PF_BIND``/``PF_UNBIND`` are no-ops since Linux 3.8, so
  they are never sent. BIND, copy mode, queue length and flags go in one
  config message: the kernel applies them in that order in one call, so no
  packet is ever queued to us in the default NFQNL_COPY_NONE mode.
- ``NFQA_CFG_FLAGS`` is refused without ``NFQA_CFG_MASK``.
- A batch verdict applies to every queued packet whose id is not after the
  given id (serial arithmetic on 32-bit ids), in queue (= id) order.
- Verdicts may be concatenated in one datagram: the kernel processes each
  message in turn and answers a failing one with an NLMSG_ERROR, without
  stopping at it. So one ``send`` carries many verdicts.
- When our socket's receive buffer is full the kernel drops the packet
  (or, with NFQA_CFG_F_FAIL_OPEN, lets it through unqueued) and our next
  ``recv`` fails with ENOBUFS: that is counted as an overrun, not an error.
- Closing the socket (or UNBIND) drops every packet still waiting for a
  verdict: release them first.
- Seen on this workplace's kernel: NFQA_CFG_F_CONNTRACK is refused with
  EOPNOTSUPP (no nfnetlink conntrack glue built in), and forwarded packets
  carry no NFQA_TIMESTAMP, so arrival time is taken when we read them.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass
from typing import Iterator

NETLINK_NETFILTER = 12
SO_RCVBUFFORCE = 33

# nlmsghdr
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4

NFNL_SUBSYS_QUEUE = 3
NFNETLINK_V0 = 0
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3

# Packet and verdict attributes (enum nfqnl_attr_type).
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_MARK = 3
NFQA_TIMESTAMP = 4
NFQA_IFINDEX_INDEV = 5
NFQA_IFINDEX_OUTDEV = 6
NFQA_IFINDEX_PHYSINDEV = 7
NFQA_IFINDEX_PHYSOUTDEV = 8
NFQA_HWADDR = 9
NFQA_PAYLOAD = 10
NFQA_CT = 11
NFQA_CT_INFO = 12
NFQA_CAP_LEN = 13
NFQA_SKB_INFO = 14

# Config attributes (enum nfqnl_attr_config) and their values.
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_NONE, NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 0, 1, 2
NFQNL_COPY_NONE, NFQNL_COPY_META, NFQNL_COPY_PACKET = 0, 1, 2
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_CONNTRACK = 1 << 1
NFQA_CFG_F_GSO = 1 << 2
NFQA_CFG_F_UID_GID = 1 << 3

# Verdicts (include/uapi/linux/netfilter.h). NF_STOLEN is refused in verdicts.
NF_DROP, NF_ACCEPT, NF_STOLEN, NF_QUEUE, NF_REPEAT, NF_STOP = 0, 1, 2, 3, 4, 5

# Netfilter hooks, as reported in the packet header.
HOOKS = {0: "PREROUTING", 1: "INPUT", 2: "FORWARD", 3: "OUTPUT", 4: "POSTROUTING"}

# Largest payload the kernel will copy (nla_len is 16 bits, header included).
MAX_COPY_RANGE = 0xFFFF - 4
DEFAULT_MAXLEN = 1024  # the kernel's own default (NFQNL_QMAX_DEFAULT)

NLMSGHDR = struct.Struct("=IHHII")       # host order
NFGENMSG = struct.Struct("!BBH")         # res_id is big-endian
NLATTR = struct.Struct("=HH")            # host order
NLMSGERR = struct.Struct("=i")           # negative errno, then the offending header
PACKET_HDR = struct.Struct("!IHB")
VERDICT_HDR = struct.Struct("!II")
BE32 = struct.Struct("!I")
TIMESTAMP = struct.Struct("!QQ")
CONFIG_CMD = struct.Struct("!BxH")
CONFIG_PARAMS = struct.Struct("!IB")
HEADER_LEN = NLMSGHDR.size + NFGENMSG.size   # 20: where the attributes start
ID_MASK = 0xFFFFFFFF


def msg_type(msg: int) -> int:
    return (NFNL_SUBSYS_QUEUE << 8) | msg


def align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = NLATTR.size + len(value)
    return NLATTR.pack(length, kind) + value + b"\0" * (align(length) - length)


def message(msg: int, queue: int, attrs: bytes = b"", *, flags: int = NLM_F_REQUEST, seq: int = 0,
            family: int = socket.AF_UNSPEC) -> bytes:
    """A whole nfnetlink queue message: nlmsghdr + nfgenmsg + attributes."""
    body = NFGENMSG.pack(family, NFNETLINK_V0, queue) + attrs
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), msg_type(msg), flags, seq, 0) + body


def config_message(queue: int, *, command: int | None = NFQNL_CFG_CMD_BIND, copy_mode: int | None = NFQNL_COPY_PACKET,
                   copy_range: int = 0xFFFF, maxlen: int | None = None, flags: int | None = None,
                   flags_mask: int | None = None, seq: int = 0, ack: bool = True) -> bytes:
    """NFQNL_MSG_CONFIG with whichever of command, copy mode, queue length and flags are given."""
    attrs = b""
    if command is not None:
        attrs += attr(NFQA_CFG_CMD, CONFIG_CMD.pack(command, socket.AF_UNSPEC))
    if copy_mode is not None:
        attrs += attr(NFQA_CFG_PARAMS, CONFIG_PARAMS.pack(copy_range, copy_mode))
    if maxlen is not None:
        attrs += attr(NFQA_CFG_QUEUE_MAXLEN, BE32.pack(maxlen))
    if flags is not None:
        mask = flags if flags_mask is None else flags_mask
        attrs += attr(NFQA_CFG_MASK, BE32.pack(mask)) + attr(NFQA_CFG_FLAGS, BE32.pack(flags))
    return message(NFQNL_MSG_CONFIG, queue, attrs, flags=NLM_F_REQUEST | (NLM_F_ACK if ack else 0), seq=seq)


def verdict_message(queue: int, packet_id: int, verdict: int = NF_ACCEPT, *, payload: bytes | None = None,
                    mark: int | None = None, seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT for one packet; ``payload`` replaces the packet, ``mark`` sets its mark."""
    attrs = attr(NFQA_VERDICT_HDR, VERDICT_HDR.pack(verdict, packet_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, BE32.pack(mark))
    if payload is not None:
        attrs += attr(NFQA_PAYLOAD, bytes(payload))
    return message(NFQNL_MSG_VERDICT, queue, attrs, seq=seq)


def batch_verdict_message(queue: int, max_id: int, verdict: int = NF_ACCEPT, *, mark: int | None = None,
                          seq: int = 0) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: ``verdict`` for every queued packet with an id not after ``max_id``."""
    attrs = attr(NFQA_VERDICT_HDR, VERDICT_HDR.pack(verdict, max_id))
    if mark is not None:
        attrs += attr(NFQA_MARK, BE32.pack(mark))
    return message(NFQNL_MSG_VERDICT_BATCH, queue, attrs, seq=seq)


def id_after(a: int, b: int) -> bool:
    """Serial-number order of 32-bit packet ids, as the kernel's nfq_id_after()."""
    return 0 < ((a - b) & ID_MASK) < 0x80000000


@dataclass(slots=True)
class Packet:
    """One queued packet, as the kernel described it."""
    id: int
    hw_protocol: int
    hook: int
    queue: int
    family: int
    payload: bytes = b""
    mark: int = 0
    indev: int = 0
    outdev: int = 0
    timestamp: float | None = None   # the skb's receive time (CLOCK_REALTIME), when the kernel had one
    cap_len: int | None = None       # the packet's real length when the payload was truncated
    skb_info: int = 0

    @property
    def truncated(self) -> bool:
        return self.cap_len is not None and self.cap_len > len(self.payload)


class NetlinkError(OSError):
    """The kernel refused a request (NLMSG_ERROR with a negative errno)."""


def messages(data, nbytes: int | None = None) -> Iterator[tuple[int, int, int, int]]:
    """(type, flags, start, end) of each netlink message in a datagram; stops at a malformed one."""
    end = len(data) if nbytes is None else nbytes
    offset = 0
    while offset + NLMSGHDR.size <= end:
        length, kind, flags, _seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > end:
            break
        yield kind, flags, offset, offset + length
        offset += align(length)


def parse_error(data, start: int) -> int:
    """The errno of an NLMSG_ERROR message (0 is an ack)."""
    return -NLMSGERR.unpack_from(data, start + NLMSGHDR.size)[0]


def attributes(data, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of each attribute between start and end."""
    offset = start
    while offset + NLATTR.size <= end:
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > end:
            break
        # NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits of the type.
        yield kind & 0x3FFF, offset + NLATTR.size, offset + length
        offset += align(length)


def parse_packet(data, start: int, end: int) -> Packet:
    """A NFQNL_MSG_PACKET message (from its nlmsghdr to its end) as a Packet."""
    family, _version, queue = NFGENMSG.unpack_from(data, start + NLMSGHDR.size)
    packet = Packet(0, 0, 0, queue, family)
    have_header = False
    for kind, lo, hi in attributes(data, start + HEADER_LEN, end):
        if kind == NFQA_PACKET_HDR:
            packet.id, packet.hw_protocol, packet.hook = PACKET_HDR.unpack_from(data, lo)
            have_header = True
        elif kind == NFQA_PAYLOAD:
            packet.payload = bytes(data[lo:hi])
        elif kind == NFQA_MARK:
            packet.mark = BE32.unpack_from(data, lo)[0]
        elif kind == NFQA_IFINDEX_OUTDEV:
            packet.outdev = BE32.unpack_from(data, lo)[0]
        elif kind == NFQA_IFINDEX_INDEV:
            packet.indev = BE32.unpack_from(data, lo)[0]
        elif kind == NFQA_TIMESTAMP:
            sec, usec = TIMESTAMP.unpack_from(data, lo)
            packet.timestamp = sec + usec / 1e6
        elif kind == NFQA_CAP_LEN:
            packet.cap_len = BE32.unpack_from(data, lo)[0]
        elif kind == NFQA_SKB_INFO:
            packet.skb_info = BE32.unpack_from(data, lo)[0]
    if not have_header:
        raise ValueError("packet message without NFQA_PACKET_HDR")
    return packet


def packet_queue(data, start: int) -> int:
    """The queue number (nfgenmsg res_id) a message is about."""
    return (data[start + 18] << 8) | data[start + 19]


def packet_id(data, start: int) -> int:
    """The packet id of a packet message, cheaply: the kernel always puts NFQA_PACKET_HDR first."""
    length, kind = NLATTR.unpack_from(data, start + HEADER_LEN)
    if kind & 0x3FFF == NFQA_PACKET_HDR and length >= NLATTR.size + PACKET_HDR.size:
        return BE32.unpack_from(data, start + HEADER_LEN + NLATTR.size)[0]
    return parse_packet(data, start, start + NLMSGHDR.unpack_from(data, start)[0]).id


def payload_bounds(data, start: int, end: int) -> tuple[int, int, bool]:
    """(start, end, truncated) of the payload of a packet message; (0, 0, False) without one."""
    lo = hi = 0
    truncated = False
    for kind, a, b in attributes(data, start + HEADER_LEN, end):
        if kind == NFQA_PAYLOAD:
            lo, hi = a, b
        elif kind == NFQA_CAP_LEN:
            truncated = True
    return lo, hi, truncated


class NfQueue:
    """A netlink socket bound to one queue number (``bind`` adds more). Non-blocking once bound:
    poll ``fileno()``, then drain with ``receive_into``.

    Verdicts are buffered and go to the kernel in one ``send`` at ``flush()``.
    """

    RECV_SIZE = 0x10000 + 4096  # the largest packet message: 64 KiB payload plus headers

    def __init__(self, number: int, *, copy_range: int = 0xFFFF, maxlen: int = DEFAULT_MAXLEN, fail_open: bool = False,
                 rcvbuf: int = 8 << 20, out_size: int = 64 << 10, sock: socket.socket | None = None):
        self.number = number       # the first queue bound: the default for verdicts
        self.numbers: list[int] = []
        self.overruns = 0          # ENOBUFS: the kernel could not hand us packets
        self.verdict_errors = 0    # NLMSG_ERROR answers to verdicts
        self.last_error = 0
        self._seq = 0
        self._backlog: list[bytes] = []
        self._out = bytearray(out_size)
        self._out_len = 0
        self._templates: dict[tuple[int, bool], bytes] = {}
        # ``sock``: an already-open datagram socket that plays the kernel (tests).
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            if sock is None:
                self.sock.bind((0, 0))
                self.portid = self.sock.getsockname()[0]
                self._grow_rcvbuf(rcvbuf)
            else:
                self.portid = 0
            self.bind(number, copy_range=copy_range, maxlen=maxlen, fail_open=fail_open)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    # --- setup ------------------------------------------------------------------

    def bind(self, number: int, *, copy_range: int = 0xFFFF, maxlen: int = DEFAULT_MAXLEN, fail_open: bool = False) -> None:
        """Bind one more queue number to this socket; its packets arrive here too (res_id tells which)."""
        if not 0 <= number <= 0xFFFF:
            raise ValueError(f"queue number {number} is not in 0..65535")
        flags = NFQA_CFG_F_FAIL_OPEN if fail_open else 0
        self._request(config_message(number, command=NFQNL_CFG_CMD_BIND, copy_mode=NFQNL_COPY_PACKET,
                                     copy_range=copy_range, maxlen=maxlen, flags=flags,
                                     flags_mask=NFQA_CFG_F_FAIL_OPEN, seq=self._next_seq()),
                      what=f"binding NFQUEUE {number}")
        self.numbers.append(number)

    def _grow_rcvbuf(self, size: int) -> None:
        # A deep receive buffer absorbs bursts; FORCE passes rmem_max (needs CAP_NET_ADMIN, which nodes have).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & ID_MASK
        return self._seq

    def _request(self, msg: bytes, what: str) -> None:
        """Send a request with NLM_F_ACK and wait for its answer, keeping packets that arrive meanwhile."""
        seq = NLMSGHDR.unpack_from(msg, 0)[3]
        blocking = self.sock.getblocking()
        self.sock.settimeout(5)
        try:
            self.sock.send(msg)
            while True:
                try:
                    data = self.sock.recv(self.RECV_SIZE)
                except socket.timeout:
                    raise NetlinkError(errno.ETIMEDOUT, f"{what}: no answer from the kernel") from None
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self.overruns += 1
                        continue
                    raise
                answered = False
                for kind, _flags, start, end in messages(data):
                    if kind == NLMSG_ERROR and NLMSGHDR.unpack_from(data, start)[3] == seq:
                        code = parse_error(data, start)
                        if code:
                            raise NetlinkError(code, f"{what}: {_explain(code)}")
                        answered = True
                    elif kind == msg_type(NFQNL_MSG_PACKET):
                        self._backlog.append(bytes(data[start:end]))
                    elif kind == NLMSG_ERROR:
                        self.note_error(data, start)
                if answered:
                    return
        finally:
            self.sock.settimeout(None)
            self.sock.setblocking(blocking)

    def set_maxlen(self, maxlen: int, queue: int | None = None) -> None:
        self.flush()
        self._request(config_message(self.number if queue is None else queue, command=None, copy_mode=None,
                                     maxlen=maxlen, seq=self._next_seq()), "setting the queue length")

    def set_flags(self, flags: int, mask: int, queue: int | None = None) -> None:
        self.flush()
        self._request(config_message(self.number if queue is None else queue, command=None, copy_mode=None,
                                     flags=flags, flags_mask=mask, seq=self._next_seq()), "setting queue flags")

    # --- receiving ----------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive_into(self, buf) -> int:
        """One datagram into ``buf``; 0 when nothing is waiting. ENOBUFS is counted and skipped."""
        if self._backlog:
            data = self._backlog.pop(0)
            buf[:len(data)] = data
            return len(data)
        while True:
            try:
                return self.sock.recv_into(buf)
            except BlockingIOError:
                return 0
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped (or, failing open, passed) packets it could not hand us.
                    self.overruns += 1
                    continue
                raise

    def note_error(self, data, start: int) -> None:
        """Count an NLMSG_ERROR that answers one of our verdicts (acks, errno 0, are not errors)."""
        code = parse_error(data, start)
        if code:
            self.verdict_errors += 1
            self.last_error = code

    def packets(self, buf=None) -> list[Packet]:
        """Every packet of one datagram, parsed: the convenient, slower path."""
        buf = buf if buf is not None else bytearray(self.RECV_SIZE)
        n = self.receive_into(buf)
        found = []
        for kind, _flags, start, end in messages(buf, n):
            if kind == msg_type(NFQNL_MSG_PACKET):
                found.append(parse_packet(buf, start, end))
            elif kind == NLMSG_ERROR:
                self.note_error(buf, start)
        return found

    # --- verdicts -----------------------------------------------------------------

    def verdict(self, packet_id: int, verdict: int = NF_ACCEPT, *, payload: bytes | None = None,
                mark: int | None = None, queue: int | None = None) -> None:
        number = self.number if queue is None else queue
        if payload is None:
            template = self._templates.get((number, mark is not None))
            if template is None:
                template = self._templates[(number, mark is not None)] = verdict_message(
                    number, 0, NF_ACCEPT, mark=None if mark is None else 0)
            o = self._reserve(len(template))
            self._out[o:o + len(template)] = template
            VERDICT_HDR.pack_into(self._out, o + HEADER_LEN + NLATTR.size, verdict, packet_id)
            if mark is not None:
                BE32.pack_into(self._out, o + len(template) - 4, mark)
        else:
            msg = verdict_message(number, packet_id, verdict, payload=payload, mark=mark)
            o = self._reserve(len(msg))
            self._out[o:o + len(msg)] = msg

    def verdict_batch(self, max_id: int, verdict: int = NF_ACCEPT, *, mark: int | None = None,
                      queue: int | None = None) -> None:
        msg = batch_verdict_message(self.number if queue is None else queue, max_id, verdict, mark=mark)
        o = self._reserve(len(msg))
        self._out[o:o + len(msg)] = msg

    def _reserve(self, size: int) -> int:
        if self._out_len + size > len(self._out):
            self.flush()
            if size > len(self._out):
                self._out = bytearray(size)
        o = self._out_len
        self._out_len += size
        return o

    def flush(self) -> None:
        """Hand every buffered verdict to the kernel in one datagram."""
        if self._out_len:
            n, self._out_len = self._out_len, 0
            self.sock.send(memoryview(self._out)[:n])

    # --- teardown -------------------------------------------------------------------

    def close(self) -> None:
        """Flush, unbind and close. Packets still waiting for a verdict are dropped by the kernel."""
        if self.sock.fileno() < 0:
            return
        try:
            self.flush()
            for number in self.numbers:
                self.sock.send(config_message(number, command=NFQNL_CFG_CMD_UNBIND, copy_mode=None, ack=False))
        except OSError:
            pass  # closing the socket unbinds too
        self.sock.close()

    def __enter__(self) -> "NfQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _explain(code: int) -> str:
    known = {
        errno.EBUSY: "another program already holds this queue number",
        errno.EPERM: "not permitted (the queue belongs to another socket, or CAP_NET_ADMIN is missing)",
        errno.EOPNOTSUPP: "this kernel does not support the requested queue flags",
        errno.ENODEV: "no such queue",
    }
    return known.get(code, os.strerror(code))


def kernel_counters(number: int, path: str = "/proc/net/netfilter/nfnetlink_queue") -> dict | None:
    """The kernel's own view of a queue (this network namespace), or None when it has no such queue."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    return parse_kernel_counters(lines, number)


def parse_kernel_counters(lines: list[str], number: int) -> dict | None:
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[0] == str(number):
            return {"portid": int(fields[1]), "waiting": int(fields[2]), "copy_mode": int(fields[3]),
                    "copy_range": int(fields[4]), "queue_dropped": int(fields[5]), "user_dropped": int(fields[6]),
                    "id_sequence": int(fields[7])}
    return None
