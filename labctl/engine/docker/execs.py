"""Commands in containers: one-shot execs with their output, and execs with stdin attached."""

from __future__ import annotations

import io
from typing import Callable, Sequence

from .. import ExecResult, Stream


def run(api, ident: str, argv: Sequence[str], stream: Callable[[bytes, bool], None] | None = None) -> ExecResult:
    exec_id = api.exec_create(ident, list(argv), stdout=True, stderr=True)["Id"]
    out, err = io.BytesIO(), io.BytesIO()
    for chunk_out, chunk_err in api.exec_start(exec_id, stream=True, demux=True):
        if chunk_out:
            out.write(chunk_out)
            if stream:
                stream(chunk_out, False)
        if chunk_err:
            err.write(chunk_err)
            if stream:
                stream(chunk_err, True)
    code = api.exec_inspect(exec_id).get("ExitCode")
    return ExecResult(code if code is not None else -1, out.getvalue().decode(errors="replace"),
                      err.getvalue().decode(errors="replace"))


def attach(api, ident: str, argv: Sequence[str]) -> "DockerStream":
    exec_id = api.exec_create(ident, list(argv), stdin=True, stdout=True, stderr=True, tty=False)["Id"]
    return DockerStream(api, exec_id, api.exec_start(exec_id, socket=True, tty=False))


class DockerStream(Stream):
    """An exec with stdin attached. Without a TTY, Docker frames each chunk of output
    with an 8-byte header: stream (1 stdout, 2 stderr), three zero bytes, big-endian size."""

    def __init__(self, api, exec_id: str, sock):
        self.api = api
        self.exec_id = exec_id
        self.sock = sock
        self.raw = getattr(sock, "_sock", sock)
        # A stream is a long-lived line (an actor, a live capture): silence is no error, so the
        # client's request timeout (120 s) must not end it. close() still ends a blocked read.
        self.raw.settimeout(None)

    def write(self, data: bytes) -> None:
        self.raw.sendall(data)

    def read(self) -> tuple[int, bytes] | None:
        header = self._exactly(8)
        if header is None:
            return None
        size = int.from_bytes(header[4:8], "big")
        body = self._exactly(size)
        return None if body is None else (header[0], body)

    def _exactly(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = self.raw.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError:
            pass

    def exit_code(self) -> int | None:
        return self.api.exec_inspect(self.exec_id).get("ExitCode")
