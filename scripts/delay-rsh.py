#!/usr/bin/env python3
"""A transport command for `pbsfs pull --rsh` that adds latency: `delay-rsh.py HOST COMMAND`
runs COMMAND here with `sh -c` (like ssh on the client would) and relays both directions
through delay lines of DELAY_MS milliseconds each (default 5: a 10 ms round trip). The
bandwidth is not limited, only each byte is late: `tc netem` for a pipe.
"""
import collections
import fcntl
import os
import subprocess
import sys
import threading
import time

DELAY = float(os.environ.get("DELAY_MS", "5")) / 1000.0


def delay_line(src, dst):
    """Copies src to dst, each block DELAY after it was read."""
    queue = collections.deque()
    ready = threading.Condition()
    done = []

    def reader():
        while True:
            data = os.read(src, 1 << 20)
            with ready:
                queue.append((time.monotonic() + DELAY, data))
                ready.notify()
            if not data:
                return

    threading.Thread(target=reader, daemon=True).start()
    while True:
        with ready:
            while not queue:
                ready.wait()
            due, data = queue.popleft()
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not data:
            os.close(dst)
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(dst, view):]
        except BrokenPipeError:
            return


def widen_pipe(fd):
    """Pipes holding a whole 1 MiB block, as pbsfs makes its own: fewer, larger copies, so
    that the relay costs little CPU beside what it simulates (best effort)."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass


def main():
    command = sys.argv[2]
    child = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    for fd in (0, 1, child.stdin.fileno(), child.stdout.fileno()):
        widen_pipe(fd)
    up = threading.Thread(target=delay_line, args=(0, child.stdin.fileno()), daemon=True)
    up.start()
    delay_line(child.stdout.fileno(), 1)
    sys.exit(child.wait())


main()
