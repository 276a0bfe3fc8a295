"""TCP sockets of this network namespace, straight from the kernel (sock_diag).

The same netlink dump `ss` uses, without starting a process per sample, so
a node can be sampled every few milliseconds. TIME_WAIT sockets come with
their remaining timer (idiag_timer 3, idiag_expires in ms).

A closing connection handed to a timewait socket is dumped with that socket's
*substate* as its state (inet_twsk_diag_fill: idiag_state = tw_substate): TIME_WAIT,
or FIN_WAIT2 for an orphan that waits out tcp_fin_timeout there (`ss` shows
FIN-WAIT-2). Only timewait sockets carry timer 3, so ``timewait`` tells such a
FIN_WAIT2 from a full socket's, which the analysis needs: the full socket's
tracepoint reads FIN_WAIT2 -> CLOSE at the handoff, while the connection lives on.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3

# Kernel numbering of TCP states (include/net/tcp_states.h).
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
          8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV"}
TIMERS = {0: None, 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "probe"}
TIMEWAIT_TIMER = 3  # only timewait sockets report it (inet_twsk_diag_fill)
ALL_STATES = 0xFFFFFFFF

_HDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def request(seq: int = 1) -> bytes:
    body = _REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, ALL_STATES, b"\0" * 48)
    return _HDR.pack(_HDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_socket(body: bytes) -> dict:
    (family, state, timer, retrans, sport, dport, src, dst, _ifindex, cookie, expires, rqueue, wqueue, _uid,
     inode) = _MSG.unpack_from(body)
    return {
        "state": STATES.get(state, str(state)),
        "local": f"{socket.inet_ntoa(src[:4])}:{int.from_bytes(sport, 'big')}",
        "remote": f"{socket.inet_ntoa(dst[:4])}:{int.from_bytes(dport, 'big')}",
        "timer": TIMERS.get(timer, str(timer)),
        "timewait": timer == TIMEWAIT_TIMER,
        "expires_ms": expires,
        "retrans": retrans,
        "rqueue": rqueue,
        "wqueue": wqueue,
        "cookie": int.from_bytes(cookie, "little"),
        "inode": inode,
    }


class SocketTable:
    """A reusable netlink socket for repeated dumps."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        self.seq = 0
        self.buffer = bytearray(1 << 16)

    def dump(self) -> list[dict]:
        self.seq += 1
        self.sock.send(request(self.seq))
        sockets: list[dict] = []
        while True:
            size = self.sock.recv_into(self.buffer)
            view = memoryview(self.buffer)[:size]
            offset = 0
            while offset + _HDR.size <= size:
                length, kind, _flags, _seq, _pid = _HDR.unpack_from(view, offset)
                if kind == NLMSG_DONE:
                    return sockets
                if kind == NLMSG_ERROR:
                    code = struct.unpack_from("=i", view, offset + _HDR.size)[0]
                    raise OSError(-code, "sock_diag dump failed")
                if kind == SOCK_DIAG_BY_FAMILY:
                    sockets.append(parse_socket(bytes(view[offset + _HDR.size: offset + length])))
                offset += (length + 3) & ~3
                if length == 0:
                    break

    def close(self) -> None:
        self.sock.close()
