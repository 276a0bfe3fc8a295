"""Kill the student's server and start it again at once; say whether it listens again, and if not, why.

Runs in the server node (the lab copies it to /srv/course). `--stop PROGRAM` only stops it.
"""

import errno
import os
import re
import signal
import subprocess
import sys
import time

LOG = "/tmp/server-restart.log"


def running(program):
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if any(a.decode(errors="replace") == program for a in argv[1:2]):
            yield int(entry)


def stop(program):
    for pid in running(program):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 2
    while list(running(program)) and time.monotonic() < deadline:
        time.sleep(0.02)


def listening(port):
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return True
    return False


def main(argv):
    if argv[0] == "--stop":
        stop(argv[1])
        print(f"stopped {argv[1]}")
        return 0
    program, port = argv[0], int(argv[1])
    stop(program)
    # A killed process leaves /proc's cmdline (its memory goes first) before its sockets close:
    # until its listening socket is gone, "listening" would be the old server's.
    deadline = time.monotonic() + 2
    while listening(port) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with open(LOG, "wb") as log:
        proc = subprocess.Popen([sys.executable, program, str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    while time.monotonic() - started < 3:
        if listening(port):
            print(f"listening again on port {port} after {time.monotonic() - started:.2f} s")
            return 0
        if proc.poll() is not None:
            with open(LOG, errors="replace") as fh:
                output = fh.read().strip()
            found = re.search(r"\[Errno (\d+)\]", output)
            why = f" ({errno.errorcode.get(int(found.group(1)), '?')})" if found else ""
            print(f"the restarted server exited with status {proc.returncode} before listening{why}:\n{output[-1500:]}")
            return 1
        time.sleep(0.02)
    print(f"the restarted server is not listening on port {port} after 3 s")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
