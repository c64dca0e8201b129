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


def wait_until(predicate, timeout=5.0, interval=0.01):
    """Poll ``predicate`` until it is truthy; returns its last value (falsy on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


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
