"""Test harness: a real supervisor in a real child process, its events as a stream we can await."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from supervisor.control import request

HERE = os.path.dirname(os.path.abspath(__file__))
TARGETS = os.path.join(HERE, "supervisor_targets.py")

#: generous, hang-only bounds: a healthy run finishes far sooner
HANG = 20.0

FAST = dict(ack_interval=0.1, ack_deadline=1.0, boot_timeout=3.0, kill_timeout=0.5,
            shutdown_timeout=2.0, backoff_initial=0.05, backoff_max=0.2, min_uptime=0.5,
            max_restarts=50, restart_window=10.0, fatal_retry=30.0, memory_limit=None)


class SupProc:
    """One supervisor under test (``python tests/supervisor_targets.py <json>``)."""

    def __init__(self, slots, *, reload_slots=None, env=None, name=None, log_file=None,
                 debug=False, **config):
        self.dir = tempfile.mkdtemp(prefix="supt")      # short: unix socket paths are limited
        self.run_dir = os.path.join(self.dir, "run")
        self.log_path = os.path.join(self.dir, "stderr.log")
        self.name = name or f"t{os.getpid()}x{id(self) % 10000}"
        cfg = dict(FAST)
        cfg.update(config)
        cfg.setdefault("run_dir", self.run_dir)
        cfg["name"] = self.name
        self.config = cfg
        self.slots = slots
        self.reload_file = None
        if reload_slots is not None:
            self.reload_file = os.path.join(self.dir, "reload.json")
            self.set_reload(reload_slots)
        self.env = env
        self.log_file = log_file
        self.debug = debug
        self.proc = None
        self.events = []
        self._cond = threading.Condition()
        self._reader = None
        self.worker_pids = set()

    @property
    def socket_path(self):
        return self.config.get("control_socket") or os.path.join(self.config["run_dir"],
                                                                  "supervisor.sock")

    def path(self, name):
        return os.path.join(self.dir, name)

    def set_reload(self, slots):
        with open(self.reload_file, "w") as f:
            json.dump(slots, f)

    # -- process ---------------------------------------------------------------------------------
    def start(self, wait_ready=True):
        r, w = os.pipe()
        spec = {"config": self.config, "slots": self.slots, "event_fd": w,
                "reload_file": self.reload_file, "log_file": self.log_file, "debug": self.debug}
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        if self.env:
            env.update(self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, TARGETS, json.dumps(spec)], pass_fds=(w,),
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        os.close(w)
        self._reader = threading.Thread(target=self._read_events, args=(r,), daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_event("pool_ready")
        return self

    def _read_events(self, fd):
        buf = b""
        with os.fdopen(fd, "rb", buffering=0) as f:
            while True:
                data = f.read(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                with self._cond:
                    for line in lines:
                        ev = json.loads(line)
                        if ev.get("event") == "spawned":
                            self.worker_pids.add(ev["pid"])
                        self.events.append(ev)
                    self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "_eof"})
            self._cond.notify_all()

    def wait_event(self, event, timeout=HANG, since=0, **match):
        """The first event named ``event`` at index >= since whose fields match; fails on timeout
        or when the supervisor's event stream ended without it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(since, len(self.events)):
                    ev = self.events[i]
                    if ev["event"] == event and all(ev.get(k) == v for k, v in match.items()):
                        ev["_index"] = i
                        return ev
                    if ev["event"] == "_eof":
                        raise AssertionError(f"supervisor ended before event {event} {match}; "
                                             f"log:\n{self.log()[-3000:]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no event {event} {match} within {timeout} s; log:\n"
                                         f"{self.log()[-3000:]}")
                self._cond.wait(left)

    def wait_count(self, event, n, timeout=HANG, **match):
        """Wait until ``n`` events named ``event`` (matching) have been seen; returns the n-th."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [e for e in self.events
                        if e["event"] == event and all(e.get(k) == v for k, v in match.items())]
                if len(hits) >= n:
                    return hits[n - 1]
                if self.events and self.events[-1]["event"] == "_eof":
                    raise AssertionError(f"supervisor ended after {len(hits)} {event} events")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"only {len(hits)}/{n} {event} events within {timeout} s")
                self._cond.wait(left)

    def find(self, event, **match):
        with self._cond:
            return [e for e in self.events
                    if e["event"] == event and all(e.get(k) == v for k, v in match.items())]

    def mark(self):
        with self._cond:
            return len(self.events)

    def request(self, obj, timeout=5.0):
        return request(self.socket_path, obj, timeout=timeout)

    def status(self):
        reply = self.request({"cmd": "status"})
        assert reply["ok"], reply
        return reply

    def slot_status(self, slot):
        return next(s for s in self.status()["slots"] if s["slot"] == slot)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=HANG):
        return self.proc.wait(timeout)

    def stop(self, timeout=HANG):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        # belt and braces: no worker may outlive a test, whatever the outcome -- but only kill a
        # pid that is still ours (its title or command line names this test's pool), never a
        # process that reused the number
        for pid in self.worker_pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    mine = self.name.encode() in f.read()
                if mine:
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        if self._reader is not None:
            self._reader.join(5)
        shutil.rmtree(self.dir, ignore_errors=True)


from conftest import alive  # noqa: E402,F401  (re-exported for the supervisor tests)


def children_of(pid):
    """``[(child_pid, state)]`` from /proc."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rindex(b")") + 2:].split()
        if int(rest[1]) == pid:
            out.append((int(name), rest[0].decode()))
    return out


def wait_until(pred, timeout=HANG, interval=0.02, what="condition"):
    """For conditions that have no event (a process disappearing): poll with a hang-only bound."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def supervise():
    """``supervise(slots, **config)`` -> a started SupProc, killed and cleaned up afterwards."""
    made = []

    def make(slots, start=True, wait_ready=True, **kw):
        sp = SupProc(slots, **kw)
        made.append(sp)
        if start:
            sp.start(wait_ready=wait_ready)
        return sp

    yield make
    for sp in made:
        sp.close()
