"""`pool.Client`: the synchronous API scripts, Django views and Celery tasks use.

Pushes and listens go straight to the worker that owns the topic (one hop over a unix socket
in run_dir); status, stop and reload go to the supervisor's control socket. Every call is
bounded by its timeout. The client is safe across threads and fork: each thread of each
process opens its own sockets.

Outcomes of a push, as the caller sees them: the reply's response (ok), `ReplyError` (the
server replied error), `PushTimeout`, `Rejected` (unknown topic, channel closed or FATAL,
buffer full, too many pushes awaiting a reply, worker stopping) and `WorkerLost` (the worker died with the push in flight; seen
at once through EOF). ``retry_lost=N`` re-sends a push lost that way up to N times, to the
replacement worker, within the same timeout: only safe for idempotent pushes.
"""
import os
import threading
import time

from supervisor.control import request as control_request
from supervisor.errors import ControlError

from .errors import NotRunning, PoolError, PushTimeout, Rejected, Timeout, WorkerLost
from .workerclient import WorkerConnection

RESPAWN_POLL = 0.05


def control_path(run_dir):
    return os.path.join(run_dir, "supervisor.sock")


def resolve_run_dir(target):
    """A run_dir from a directory, a config file path or a PoolConfig."""
    run_dir = getattr(target, "run_dir", None)
    if run_dir is not None:
        return run_dir
    target = os.fspath(target)
    if os.path.isfile(target):
        from .config import load_config
        return load_config(path=target).run_dir
    if target.endswith((".toml", ".tml")):
        raise NotRunning(f"config file {target!r} not found")
    # a run_dir, possibly not created yet: calls raise NotRunning until the pool is up
    return target


def pool_status(raw):
    """The supervisor's status in the pool's words: slots are channels, named by topic."""
    sup = raw["supervisor"]
    channels = []
    for slot in raw["slots"]:
        info = slot.get("info") or {}
        channels.append({
            "topic": slot["slot"],
            "state": slot["state"],
            "worker_state": slot.get("worker_state"),
            "pid": slot.get("pid"),
            "restarts": slot.get("restarts"),
            "uptime": slot.get("uptime"),
            "last_ack_age": slot.get("last_ack_age"),
            "last_heartbeat_age": slot.get("last_heartbeat_age"),
            "rss": slot.get("rss"),
            "buffered": info.get("buffered"),
            "inflight": info.get("inflight"),
            "next_start_in": slot.get("next_start_in"),
            "exit_reasons": slot.get("exit_reasons", []),
        })
    return {
        "pool": {"name": sup["name"], "pid": sup["pid"], "state": sup["state"],
                 "uptime": sup["uptime"], "channels": sup["slots"], "joined": sup["ready"],
                 "fatal": sup.get("fatal", 0), "rss": sup.get("rss"), "liveness": sup.get("liveness")},
        "channels": channels,
    }


class Client:
    def __init__(self, target, *, timeout=10.0, retry_lost=0, control_timeout=5.0):
        self.run_dir = resolve_run_dir(target)
        self.timeout = timeout
        self.retry_lost = retry_lost
        self.control_timeout = control_timeout
        self._local = threading.local()

    def _socket_path(self, topic):
        from .config import channel_socket_path
        return channel_socket_path(self.run_dir, topic)

    def _connections(self):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or forked: open our own
            local.pid, local.workers = os.getpid(), {}
        return local.workers

    def _worker(self, topic):
        workers = self._connections()
        conn = workers.get(topic)
        if conn is None:
            conn = workers[topic] = WorkerConnection(self._socket_path(topic))
        return conn

    # -- supervisor ----------------------------------------------------------------------

    def _control(self, cmd, timeout=None, **args):
        try:
            reply = control_request(control_path(self.run_dir), dict(args, cmd=cmd),
                                    timeout=timeout or self.control_timeout)
        except ControlError as exc:
            raise NotRunning(f"no pool answering in {self.run_dir}: {exc}") from None
        if not reply.get("ok"):
            raise PoolError(f"{cmd} refused: {reply.get('error', 'unknown error')}")
        return reply

    def raw_status(self, timeout=None):
        return self._control("status", timeout)

    def status(self, timeout=None):
        """``{"pool": {...}, "channels": [{"topic", "state", "pid", ...}]}`` (see docs/operations.md)."""
        return pool_status(self.raw_status(timeout))

    def stop(self, timeout=None):
        """Ask the supervisor for a graceful stop (returns once the request is accepted)."""
        self._control("stop", timeout)

    def reload(self, timeout=None):
        return self._control("reload", timeout)

    def _check_available(self, topic):
        """Raise Rejected when the topic cannot be served now or soon, else return (respawning)."""
        status = self.raw_status()
        for slot in status["slots"]:
            if slot["slot"] == topic:
                if slot["state"] == "FATAL":
                    raise Rejected(f"channel {topic!r} is FATAL (crashing repeatedly); "
                                   f"next retry in {slot.get('next_start_in')} s")
                return
        raise Rejected(f"unknown topic {topic!r}: no such channel in this pool")

    # -- data path -----------------------------------------------------------------------

    def push(self, topic, event, payload=None, timeout=None):
        """Push to ``topic`` and return the reply's response (see the module docstring)."""
        timeout = self.timeout if timeout is None else timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        deadline = time.monotonic() + timeout
        lost = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PushTimeout(f"{event!r} on {topic!r}: no worker available within {timeout:g}s")
            try:
                return self._worker(topic).push(topic, event, payload, timeout=remaining)
            except NotRunning:
                self._check_available(topic)
                time.sleep(min(RESPAWN_POLL, max(0.0, deadline - time.monotonic())))
            except WorkerLost:
                if lost >= self.retry_lost:
                    raise
                lost += 1
                time.sleep(min(RESPAWN_POLL, max(0.0, deadline - time.monotonic())))

    def listen(self, topic, timeout=None):
        """Yield inbound messages of ``topic`` as `pool.Message`; stop after ``timeout`` seconds
        without one (None: never). Follows the channel to a replacement worker on its own.
        A message with event "pool:dropped" reports messages dropped because this listener
        did not keep up."""
        conn = WorkerConnection(self._socket_path(topic))
        idle_until = None if timeout is None else time.monotonic() + timeout
        subscribed = False
        delay = RESPAWN_POLL
        try:
            while idle_until is None or time.monotonic() < idle_until:
                wait = 1.0 if idle_until is None else max(0.0, idle_until - time.monotonic())
                try:
                    if not subscribed:
                        conn.subscribe(topic, timeout=min(self.control_timeout, max(wait, 0.1)))
                        subscribed, delay = True, RESPAWN_POLL
                    msg = conn.next_message(wait)
                except (NotRunning, WorkerLost, Timeout):
                    if not subscribed:
                        self._check_available(topic)
                    subscribed = False
                    conn.close()
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                if msg is not None:
                    if timeout is not None:
                        idle_until = time.monotonic() + timeout
                    yield msg
        finally:
            conn.close()

    def wait_joined(self, timeout=30.0):
        """Wait until every channel is joined; returns True, or False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.raw_status()
                sup = status["supervisor"]
                if sup["slots"] and sup["ready"] == sup["slots"]:
                    return True
            except NotRunning:
                pass
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def close(self):
        """Close this thread's connections (others close when their threads end)."""
        workers = self._connections()
        for conn in workers.values():
            conn.close()
        workers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
