import os
import shutil
import signal
import tempfile
import time

import multiprocess as mp
import pytest

from pool.testserver import PhoenixServer, StallListener
from pool.workerclient import WorkerConnection

SPAWN = mp.get_context("spawn")  # the test process runs server threads: never fork it


def alive(pid):
    """True if ``pid`` exists and is not a zombie."""
    from supervisor import procinfo
    state = procinfo.proc_state(pid)
    return state is not None and state != "Z"


def rss_kib(pid):
    """Current resident memory of ``pid`` in KiB (/proc/PID/statm, never ru_maxrss)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def worker_settings(url, run_dir, **kw):
    """WorkerSettings with test-sized timings (tenths of a second) and a socket in run_dir."""
    from pool.worker import WorkerSettings
    base = dict(url=url, socket_path=os.path.join(run_dir, "w.sock"), heartbeat_interval=0.3,
                send_timeout=0.5, connect_timeout=0.5, push_timeout=1.0,
                reconnect_schedule=(0.01, 0.05, 0.1), rejoin_schedule=(0.05, 0.1, 0.2),
                forbidden_schedule=(0.3,))
    base.update(kw)
    return WorkerSettings(**base)


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Poll ``predicate`` until it is truthy; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def pipeline(path, pushes):
    """Send several push frames at once on one worker connection (topic, event, timeout each);
    return their outcome headers in send order."""
    import socket
    from pool import framing
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    try:
        for i, (topic, event, timeout) in enumerate(pushes):
            sock.sendall(framing.encode({"op": "push", "id": i, "topic": topic, "event": event,
                                         "timeout": timeout}, b'{"n":%d}' % i))
        reader, out = framing.Reader(), {}
        deadline = time.monotonic() + 10
        while len(out) < len(pushes):
            head, _ = framing.recv_frame(sock, reader, deadline)
            out[head["id"]] = head
        return [out[i] for i in range(len(pushes))]
    finally:
        sock.close()


def check_buffered_pushes_go_out_in_order(server, worker, release):
    """Three pipelined pushes wait in ``worker``'s buffer; after ``release()`` (the fault that
    kept the channel from joining is lifted) each gets "ok" and the server sees them in order."""
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.update(
        out=pipeline(worker.path, [("room:1", f"e{i}", 5) for i in range(3)])))
    t.start()
    assert wait_until(lambda: worker.info()["buffered"] == 3, 3)
    release()
    t.join(10)
    assert [h["outcome"] for h in result["out"]] == ["ok"] * 3
    sent = [m["event"] for _, m in server.received if m["event"].startswith("e")]
    assert sent == ["e0", "e1", "e2"]


@pytest.fixture
def server():
    with PhoenixServer() as srv:
        yield srv


@pytest.fixture
def stall():
    with StallListener() as listener:
        yield listener


@pytest.fixture
def run_dir():
    path = tempfile.mkdtemp(prefix="pool-t-", dir="/tmp")  # short: unix socket paths max 107 bytes
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _worker_main(settings, channels, log_level):
    import logging
    import sys
    from pool.worker import StandaloneContext, Worker
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format="%(asctime)s worker %(name)s %(levelname)s %(message)s")
    ctx = StandaloneContext(slot=channels[0].topic, ack_interval=0.1, shutdown_timeout=2.0)
    sys.exit(Worker(settings, channels, ctx).run())


class WorkerProcess:
    def __init__(self, settings, channels):
        self.path = settings.socket_path
        self.proc = SPAWN.Process(target=_worker_main, args=(settings, channels, "INFO"), daemon=True)
        self.proc.start()
        assert wait_until(lambda: os.path.exists(self.path), 10), "worker socket never appeared"
        self.client = WorkerConnection(self.path)

    def info(self):
        return self.client.info()

    def wait_state(self, state, timeout=5.0):
        last = {}

        def check():
            last.update(self.info())
            return last["state"] == state
        assert wait_until(check, timeout), f"worker state {last.get('state')!r}, wanted {state!r}: {last}"
        return last

    def stop(self):
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.client.close()


@pytest.fixture
def spawn_worker(run_dir):
    procs = []

    def start(settings, channels):
        proc = WorkerProcess(settings, channels)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.stop()
