"""A small supervised target that can be told to misbehave in each way, and a runner that puts a
real Supervisor in a real process around it (so signals, SIGKILL and PR_SET_PDEATHSIG are real).

Run as ``python tests/supervisor_targets.py '<json>'`` where the JSON holds::

    {"config": {SupervisorConfig kwargs}, "slots": [{"slot": "a", "mode": "healthy", ...}, ...],
     "event_fd": 3, "reload_file": "/path/to/slots.json" | null, "log_file": "/path" | null}

Every supervisor event is written to ``event_fd`` as one JSON line. Exit status: the value of
``Supervisor.run()``, or 75 with a message on stderr when another supervisor holds the run_dir.

Target modes (``mode``):

healthy     ack ready every ack_interval/2, leave on stop
send        healthy for ``healthy_for`` s, then block forever in a TCP send nobody reads
spin        ... then spin in C holding the GIL (catastrophic regex backtracking)
sigstop     ... then SIGSTOP itself
deadlock    ... then acquire a lock it already holds
degraded    ack with ready=False forever (alive, cannot reach its server)
stale       ack ready=True while heartbeat_age grows (server heartbeat replies stopped)
memory      grow without bound (``chunk_mb`` per step) until the rlimit stops it
rss         allocate and touch ``rss_mb`` once, then healthy (soft limit recycle)
crash       ack once, then raise RuntimeError
boot_crash  raise before the first ack
exit        ack once, return (exit 0); with ``hold`` = a path: stay healthy while it exists
silent      never ack
stubborn    ack ready, ignore stop requests
recycle     ack once, then ask to be recycled (exit RECYCLE)
return_code ack once, then return ``code`` (an int return value is the exit code)

``once``: a path; the misbehaviour happens only in the worker that creates it first (O_EXCL), the
replacement is healthy -- so a test sees a wedge, then a recovery.
"""

import json
import logging
import os
import re
import select
import signal
import socket
import sys
import threading
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))

from supervisor import Supervisor, SupervisorConfig, WorkerSpec, exitcodes  # noqa: E402
from supervisor.errors import AlreadyRunning  # noqa: E402

EVENT_FD = None
ALREADY_RUNNING_EXIT = 75


def _first(path):
    """True in the first worker to claim ``path``."""
    if not path:
        return True
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def _wait(ctx, timeout):
    """One bounded wait on the contract's fds; returns "stop", "orphan" or None."""
    r, _, _ = select.select(ctx.wait_fds(), [], [], timeout)
    if r:
        if not ctx.parent_alive():
            return "orphan"
        if ctx.stop_requested:
            return "stop"
    return None


def _healthy_loop(ctx, duration=None, ready=True, state="joined", stubborn=False, hold=None):
    end = None if duration is None else time.monotonic() + duration
    titled = False
    while end is None or time.monotonic() < end:
        ctx.ack(state, ready=ready, heartbeat_age=0.1, info={"pid": os.getpid()})
        if not titled:
            ctx.set_title(f"{ctx.slot} {state}")
            titled = True
        if hold is not None and not os.path.exists(hold):
            return "released"
        what = _wait(ctx, ctx.ack_interval / 2)
        if what == "orphan":
            raise SystemExit(exitcodes.LOST_PARENT)
        if what == "stop" and not stubborn:
            return "stop"
    return None


def _wedge_send(ctx):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    a = socket.create_connection(srv.getsockname())
    _peer, _ = srv.accept()          # accepted, never read
    a.setblocking(True)
    chunk = b"x" * 65536
    while True:
        a.sendall(chunk)             # blocks once the kernel buffers are full


def _wedge_spin(ctx):
    # exponential backtracking inside the C regex engine: holds the GIL, never returns
    re.match(r"(x+x+)+y", "x" * 64)


def _wedge_sigstop(ctx):
    os.kill(os.getpid(), signal.SIGSTOP)
    # continued by the supervisor's kill escalation: leave when told to
    while not ctx.stop_requested:
        time.sleep(0.01)


def _wedge_deadlock(ctx):
    lock = threading.Lock()
    lock.acquire()
    lock.acquire()


WEDGES = {"send": _wedge_send, "spin": _wedge_spin, "sigstop": _wedge_sigstop,
          "deadlock": _wedge_deadlock}


def target(ctx, mode="healthy", once=None, healthy_for=0.5, chunk_mb=8, rss_mb=0, hold=None,
           **_ignored):
    if EVENT_FD is not None:
        try:
            os.close(EVENT_FD)       # the event pipe belongs to the supervisor under test
        except OSError:
            pass
    if mode in WEDGES or mode in ("memory", "crash", "boot_crash", "silent", "stale", "recycle"):
        if not _first(once):
            mode = "healthy"
    if mode == "healthy":
        _healthy_loop(ctx)
    elif mode in WEDGES:
        if _healthy_loop(ctx, duration=healthy_for) == "stop":
            return
        WEDGES[mode](ctx)
    elif mode == "degraded":
        _healthy_loop(ctx, ready=False, state="connecting")
    elif mode == "stale":
        start = time.monotonic()
        while True:
            ctx.ack("joined", ready=True, heartbeat_age=time.monotonic() - start)
            if _wait(ctx, ctx.ack_interval / 2):
                return
    elif mode == "memory":
        hog = []
        while True:
            ctx.ack("growing", ready=True, heartbeat_age=0.0)
            block = bytearray(chunk_mb * 2**20)
            block[::4096] = b"\1" * len(block[::4096])
            hog.append(block)
            if _wait(ctx, 0.005):
                return
    elif mode == "rss":
        ballast = bytearray(rss_mb * 2**20)
        ballast[::4096] = b"\1" * len(ballast[::4096])
        _healthy_loop(ctx)
        del ballast
    elif mode == "crash":
        ctx.ack("joined", ready=True)
        raise RuntimeError("crash as told")
    elif mode == "boot_crash":
        raise RuntimeError("boot crash as told")
    elif mode == "exit":
        ctx.ack("joined", ready=True)
        if hold is not None and os.path.exists(hold):
            _healthy_loop(ctx, hold=hold)
        return
    elif mode == "silent":
        while not ctx.stop_requested:
            select.select(ctx.wait_fds(), [], [], 1.0)
    elif mode == "stubborn":
        _healthy_loop(ctx, stubborn=True)
    elif mode == "return_code":
        ctx.ack("joined", ready=True)
        return _ignored.get("code", 0)
    elif mode == "recycle":
        ctx.ack("joined", ready=True)
        raise SystemExit(exitcodes.RECYCLE)
    else:
        raise ValueError(f"unknown mode {mode!r}")


def specs_from(slots):
    out = []
    for d in slots:
        d = dict(d)
        slot = d.pop("slot")
        fp = d.pop("fingerprint", "")
        out.append(WorkerSpec(slot=slot, target=target, kwargs=d, fingerprint=fp))
    return out


def main(argv):
    global EVENT_FD
    spec = json.loads(argv[1])
    EVENT_FD = spec.get("event_fd")
    fmt = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if spec.get("debug") else logging.INFO,
                        stream=sys.stderr, format=fmt)
    if spec.get("log_file"):
        h = logging.FileHandler(spec["log_file"])
        h.setFormatter(logging.Formatter(fmt))
        logging.getLogger().addHandler(h)

    def on_event(ev):
        if EVENT_FD is not None:
            os.write(EVENT_FD, (json.dumps(ev, default=str) + "\n").encode())

    reload_fn = None
    if spec.get("reload_file"):
        def reload_fn():
            with open(spec["reload_file"]) as f:
                return specs_from(json.load(f))

    sup = Supervisor(SupervisorConfig(**spec["config"]), specs_from(spec["slots"]),
                     reload=reload_fn, on_event=on_event)
    try:
        return sup.run()
    except AlreadyRunning as e:
        print(f"error: {e}", file=sys.stderr)
        return ALREADY_RUNNING_EXIT


if __name__ == "__main__":
    sys.exit(main(sys.argv))
