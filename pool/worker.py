"""The worker: one process, one Phoenix connection, one or more channels, one loop.

The loop reads like a to-do list: stop if asked, (re)connect when due, service the heartbeat,
time out joins and rejoin errored channels, expire pushes, ack liveness, wait on everything.
It never blocks longer than the bounds of `pool.Socket` (connect_timeout, send_timeout), so
its acks keep coming, and when something below it wedges anyway the supervisor's deadline
fires.

The seam toward the supervisor is ``ctx`` (see supervisor.WorkerContext): ``ctx.ack(state,
ready=..., heartbeat_age=..., info=...)`` from this loop, ``ctx.wait_fds()`` in the wait set,
``ctx.stop_requested``, ``ctx.parent_alive()``, ``ctx.set_title(detail)``. `StandaloneContext`
provides the same seam without a supervisor.

Push outcomes (each accepted push gets exactly one): ``ok`` / ``error`` (the server's reply),
``timeout`` (no reply within its timeout, or the connection was lost with it in flight),
``rejected`` (unknown topic, channel closed by the server, buffer full, worker stopping).
Pushes accepted while the channel is not joined wait in a bounded buffer; their timeout runs
from acceptance and a push that timed out is never sent.
"""
import heapq
import importlib
import itertools
import json
import logging
import os
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from supervisor import exitcodes

from . import protocol
from .backoff import FORBIDDEN_SCHEDULE, RECONNECT_SCHEDULE, REJOIN_SCHEDULE, Schedule
from .connection import Socket
from .errors import ConnectFailed, ConnectionLost, PoolError
from .service import ClientServer

log = logging.getLogger("pool.worker")

DOWN, JOINING, JOINED, ERRORED, CLOSED = "down", "joining", "joined", "errored", "closed"
MAX_PUSH_TIMEOUT = 86400.0


@dataclass
class ChannelSpec:
    topic: str
    payload: Any = None
    handler: Union[str, Callable, None] = None  # "module:function" or a callable(Message)


@dataclass
class WorkerSettings:
    url: str
    params: Optional[dict] = field(default=None, repr=False)  # secrets: never in a repr or log
    vsn: str = protocol.V2
    heartbeat_interval: float = 25.0
    heartbeat_timeout: Optional[float] = None
    send_timeout: float = 10.0
    connect_timeout: float = 10.0
    push_timeout: float = 10.0
    join_timeout: Optional[float] = None
    push_buffer: int = 1000
    max_inflight: int = 10000
    headers: Sequence[str] = field(default=(), repr=False)
    sslopt: Optional[dict] = None
    auth_token: Optional[str] = field(default=None, repr=False)
    socket_path: Optional[str] = None
    socket_mode: int = 0o600
    socket_group: Optional[str] = None
    allowed_uids: Sequence[int] = ()
    client_out_limit: int = 4 * 2**20
    reconnect_schedule: Sequence[float] = RECONNECT_SCHEDULE
    rejoin_schedule: Sequence[float] = REJOIN_SCHEDULE
    forbidden_schedule: Sequence[float] = FORBIDDEN_SCHEDULE
    leave_timeout: float = 2.0


class _Push:
    __slots__ = ("conn", "id", "topic", "event", "body", "deadline", "done", "ref")

    def __init__(self, conn, id, topic, event, body, deadline):
        self.conn, self.id, self.topic, self.event = conn, id, topic, event
        self.body, self.deadline = body, deadline
        self.done = False
        self.ref = None


class _Channel:
    def __init__(self, spec, handler):
        self.spec = spec
        self.topic = spec.topic
        self.handler = handler
        self.state = DOWN
        self.join_ref = None
        self.join_deadline = 0.0
        self.rejoin_at = 0.0
        self.tries = 0
        self.buffer = deque()
        self.last_error = None


def resolve_handler(handler):
    """A callable from a callable or a "package.module:function" string (imported now)."""
    if handler is None or callable(handler):
        return handler
    module, sep, name = str(handler).partition(":")
    if not sep or not module or not name:
        raise ValueError(f"handler must look like 'package.module:function', got {handler!r}")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"handler {handler!r} is not callable")
    return obj


class Worker:
    def __init__(self, settings, channels, ctx):
        if not channels:
            raise ValueError("a worker needs at least one channel")
        self.settings = s = settings
        self.ctx = ctx
        self.sock = Socket(s.url, params=s.params, vsn=s.vsn, heartbeat_interval=s.heartbeat_interval,
                           heartbeat_timeout=s.heartbeat_timeout, send_timeout=s.send_timeout,
                           connect_timeout=s.connect_timeout, push_timeout=s.push_timeout,
                           headers=s.headers, sslopt=s.sslopt, auth_token=s.auth_token)
        self.channels = {c.topic: _Channel(c, resolve_handler(c.handler)) for c in channels}
        self.join_timeout = s.join_timeout or s.push_timeout
        self.reconnect = Schedule(s.reconnect_schedule)
        self.rejoin = Schedule(s.rejoin_schedule)
        self.forbidden = Schedule(s.forbidden_schedule)
        self.connect_tries = 0
        self.connected_at = 0.0
        self.connection_proven = False
        # a connection that drops before any join succeeded on it and sooner than this (e.g. a
        # server that accepts the upgrade and closes at once) keeps climbing the reconnect
        # schedule instead of retrying every 10 ms; a join proves the connection (K14)
        self.stable_after = min(s.heartbeat_interval, 5.0)
        self.reconnect_at = 0.0
        self.state = None
        self.forbidden_status = False
        self.inflight = {}
        self.deadlines = []  # heap of (deadline, seq, push): expiry of buffered and in-flight pushes
        self._seq = itertools.count()
        self.buffered = 0
        self.finished_in_heap = 0
        self.next_ack = 0.0
        self.ctx_fired = True
        self.next_parent_check = 0.0
        self.stats = {"pushes": 0, "replies_ok": 0, "replies_error": 0, "timeouts": 0,
                      "rejected": 0, "messages": 0, "handler_errors": 0, "reconnects": 0,
                      "rejoins": 0, "lost": 0}
        self.server = None
        self.started = time.monotonic()

    # -- the loop ----------------------------------------------------------------

    def run(self):
        """Run until a graceful stop (returns 0) or the supervisor is gone (LOST_PARENT)."""
        s = self.settings
        if s.socket_path:
            self.server = ClientServer(s.socket_path, self.handle_request, mode=s.socket_mode,
                                       group=s.socket_group, allowed_uids=s.allowed_uids,
                                       out_limit=s.client_out_limit)
        self.set_state("connecting")
        try:
            while True:
                if self.ctx.stop_requested:
                    self.shutdown()
                    return 0
                now = time.monotonic()
                # the parent check costs syscalls: run it when the context's fds fired, and
                # at least once per ack interval
                if self.ctx_fired or now >= self.next_parent_check:
                    self.ctx_fired = False
                    self.next_parent_check = now + self.ctx.ack_interval
                    if not self.ctx.parent_alive():
                        log.warning("supervisor gone, exiting topic=%s", self.label)
                        return exitcodes.LOST_PARENT
                self.step(now)
                self.expire(time.monotonic())
                self.ack()
                self.wait()
        finally:
            self.sock.abort("worker exiting")
            if self.server is not None:
                self.server.close()

    def step(self, now):
        if not self.sock.connected:
            if now >= self.reconnect_at:
                self.connect()
            return
        try:
            self.sock.service()
            for ch in self.channels.values():
                if not self.sock.connected:  # a flush below lost it (on_lost already ran)
                    break
                if ch.state == JOINING and now >= ch.join_deadline:
                    self.on_join_timeout(ch)
                elif ch.state == ERRORED and now >= ch.rejoin_at:
                    self.stats["rejoins"] += 1
                    self.join(ch)
                elif ch.state == JOINED and ch.buffer:
                    self.flush_buffer(ch)
        except ConnectionLost as exc:
            self.on_lost(str(exc))

    def wait(self):
        now = time.monotonic()
        wake = min(self.next_wakeup(), self.next_ack)
        timeout = 0.0 if self.sock.wants_read() else max(0.0, wake - now)
        # poll(), not select(): a worker with many clients has descriptors above 1024
        poller = select.poll()
        objects = {}
        ctx_fds = self.ctx.wait_fds()
        for fd in ctx_fds:
            poller.register(fd, select.POLLIN)
        if self.sock.connected:
            poller.register(self.sock.fileno(), select.POLLIN)
        if self.server is not None:
            for obj in self.server.read_fds():
                objects[obj.fileno()] = obj
                poller.register(obj.fileno(), select.POLLIN)
            for conn in self.server.write_fds():
                objects[conn.fileno()] = conn
                poller.register(conn.fileno(), select.POLLIN | select.POLLOUT)
        try:
            events = poller.poll(timeout * 1000)
        except InterruptedError:
            return
        sock_fd = self.sock.fileno() if self.sock.connected else None
        sock_ready = False
        for fd, _ in events:
            if fd == sock_fd:
                sock_ready = True
            elif fd in ctx_fds:
                self.ctx_fired = True
        if self.sock.connected and (sock_ready or self.sock.wants_read()):
            try:
                self.dispatch(self.sock.poll(0, readable=sock_ready))
            except ConnectionLost as exc:
                self.on_lost(str(exc))
        if self.server is not None:
            for fd, mask in events:
                obj = objects.get(fd)
                if obj is None:
                    continue
                if obj is self.server.listener:
                    self.server.accept()
                    continue
                if mask & (select.POLLIN | select.POLLHUP | select.POLLERR) and not obj.closed:
                    self.server.on_readable(obj)
                if mask & select.POLLOUT and not obj.closed:
                    obj.flush()

    def next_wakeup(self):
        times = []
        if self.deadlines:
            times.append(self.deadlines[0][0])
        if self.sock.connected:
            times.append(self.sock.next_deadline())
            for ch in self.channels.values():
                if ch.state == JOINING:
                    times.append(ch.join_deadline)
                elif ch.state == ERRORED:
                    times.append(ch.rejoin_at)
                elif ch.state == JOINED and any(not p.done for p in ch.buffer):
                    times.append(0.0)  # a flush was cut short: go on at once
        else:
            times.append(self.reconnect_at)
        return min(times)

    # -- connection and channels -------------------------------------------------------

    def connect(self):
        self.set_state("connecting")
        try:
            self.sock.connect()
        except ConnectFailed as exc:
            self.connect_tries += 1
            self.forbidden_status = exc.status == 403
            schedule = self.forbidden if self.forbidden_status else self.reconnect
            delay = schedule.delay(self.connect_tries)
            self.reconnect_at = time.monotonic() + delay
            log.warning("connect failed topic=%s reason=%s retry_in=%.2fs",
                        self.label, exc, delay)
            self.set_state("forbidden" if self.forbidden_status else "backoff")
            return
        self.forbidden_status = False
        self.connected_at = time.monotonic()  # the backoff resets only once this proves itself
        self.connection_proven = False
        log.info("connected topic=%s url=%s", self.label, self.sock.safe_url)
        try:
            for ch in self.channels.values():
                if ch.state != CLOSED:
                    ch.tries = 0
                    self.join(ch)
            self.update_state()
        except ConnectionLost as exc:
            self.on_lost(str(exc))

    def join(self, ch):
        ch.join_ref = self.sock.send_join(ch.topic, ch.spec.payload)
        ch.state = JOINING
        ch.join_deadline = time.monotonic() + self.join_timeout
        self.update_state()

    def schedule_rejoin(self, ch, reason):
        ch.state = ERRORED
        ch.last_error = reason
        ch.tries += 1
        delay = self.rejoin.delay(ch.tries)
        ch.rejoin_at = time.monotonic() + delay
        log.warning("channel errored topic=%s reason=%s rejoin_in=%.2fs", ch.topic, reason, delay)
        self.update_state()

    def on_join_timeout(self, ch):
        try:
            self.sock.send_leave(ch.topic)  # C4: let the server drop the half-made join
        finally:
            self.schedule_rejoin(ch, "join timeout")

    def on_lost(self, reason):
        self.stats["lost"] += 1
        self.sock.abort(reason)
        for ch in self.channels.values():
            if ch.state != CLOSED:
                ch.state = DOWN
        for push in list(self.inflight.values()):
            self.finish(push, "timeout", reason=f"connection lost before the reply ({reason})")
        self.inflight.clear()
        if self.connection_proven or time.monotonic() - self.connected_at >= self.stable_after:
            self.connect_tries = 0  # it had worked (a join, or a while): start the schedule over
        self.connect_tries += 1
        self.stats["reconnects"] += 1
        delay = self.reconnect.delay(self.connect_tries)
        self.reconnect_at = time.monotonic() + delay
        log.warning("connection lost topic=%s reason=%s reconnect_in=%.3fs", self.label, reason, delay)
        self.set_state("backoff")

    def dispatch(self, messages):
        for msg in messages:
            ch = self.channels.get(msg.topic)
            if msg.event == protocol.REPLY:
                if ch is not None and ch.state == JOINING and msg.ref == ch.join_ref:
                    self.on_join_reply(ch, msg)
                else:
                    push = self.inflight.pop(msg.ref, None)
                    if push is not None:  # a reply nobody waits for any more is dropped quietly
                        self.finish(push, "ok" if msg.status == "ok" else "error", msg.response)
            elif ch is None:
                continue
            elif msg.event == protocol.ERROR:
                self.schedule_rejoin(ch, "channel crashed (phx_error)")
            elif msg.event == protocol.CLOSE:
                self.on_channel_closed(ch)
            else:
                self.deliver(ch, msg)

    def on_join_reply(self, ch, msg):
        if msg.status == "ok":
            self.connection_proven = True
            ch.state = JOINED
            ch.tries = 0
            ch.last_error = None
            log.info("joined topic=%s", ch.topic)
            self.update_state()
            self.flush_buffer(ch)
        else:
            self.schedule_rejoin(ch, f"join refused: {_short(msg.response)}")

    def on_channel_closed(self, ch):
        ch.state = CLOSED  # phx_close: closed on purpose by the server; never rejoined
        ch.last_error = "closed by the server (phx_close)"
        log.warning("channel closed by server topic=%s (no rejoin)", ch.topic)
        while ch.buffer:
            push = ch.buffer.popleft()
            if not push.done:
                self.buffered -= 1
                self.finish(push, "rejected", reason="channel closed by the server")
        self.update_state()

    def deliver(self, ch, msg):
        self.stats["messages"] += 1
        if self.server is not None:
            header = {"op": "message", "topic": msg.topic, "event": msg.event, "ref": msg.ref,
                      "join_ref": msg.join_ref}
            body = None
            for conn in list(self.server.clients.values()):
                if msg.topic in conn.subscriptions:
                    if body is None:
                        body = _payload_json(msg.payload)
                    conn.send(header, body, droppable=True)
        if ch.handler is not None:
            try:
                ch.handler(msg)
            except MemoryError:
                raise
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("handler failed topic=%s event=%s", msg.topic, msg.event)

    # -- pushes ------------------------------------------------------------------------

    def submit(self, conn, id, topic, event, body, timeout):
        """Accept a push from a client. Its outcome is sent back to ``conn`` exactly once."""
        push = _Push(conn, id, topic, event, body or b"{}", time.monotonic() + timeout)
        self.stats["pushes"] += 1
        ch = self.channels.get(topic)
        if ch is None:
            return self.finish(push, "rejected", reason=f"unknown topic {topic!r} on this worker")
        if ch.state == CLOSED:
            return self.finish(push, "rejected", reason="channel closed by the server")
        heapq.heappush(self.deadlines, (push.deadline, next(self._seq), push))
        if ch.state == JOINED and self.sock.connected:
            if len(self.inflight) >= self.settings.max_inflight:
                self.finish(push, "rejected", reason=f"too many pushes awaiting a reply "
                                                     f"({self.settings.max_inflight})")
            else:
                self.send_push(push)
        elif self.buffered >= self.settings.push_buffer:
            self.finish(push, "rejected", reason=f"push buffer full ({self.settings.push_buffer})")
        else:
            ch.buffer.append(push)
            self.buffered += 1

    def send_push(self, push):
        try:
            push.ref = self.sock.send_push(push.topic, push.event, payload_json=push.body)
            push.body = None  # on the wire: only the outcome is left to deliver
        except ConnectionLost as exc:
            self.finish(push, "timeout", reason=f"connection lost while sending ({exc})")
            self.on_lost(str(exc))
            return False
        self.inflight[push.ref] = push
        return True

    def flush_buffer(self, ch):
        # one pass flushes for at most one ack interval, so a slowly draining peer cannot hold
        # the loop (and its acks) through hundreds of individually bounded sends
        budget = time.monotonic() + self.ctx.ack_interval
        while ch.buffer and ch.state == JOINED and self.sock.connected and time.monotonic() < budget:
            push = ch.buffer.popleft()
            if push.done:
                continue
            self.buffered -= 1
            if not self.send_push(push):
                return

    def expire(self, now):
        while self.deadlines and self.deadlines[0][0] <= now:
            _, _, push = heapq.heappop(self.deadlines)
            if push.done:
                self.finished_in_heap = max(0, self.finished_in_heap - 1)
                continue
            if push.ref is not None:
                self.inflight.pop(push.ref, None)
                self.finish(push, "timeout", reason="no reply within the push timeout")
            else:
                self.buffered -= 1
                try:
                    self.channels[push.topic].buffer.remove(push)  # <= push_buffer entries
                except ValueError:
                    pass
                self.finish(push, "timeout", reason="not sent: the channel was not joined in time")

    def finish(self, push, outcome, response=None, reason=None):
        if push.done:
            return
        push.done = True
        push.body = None
        self.finished_in_heap += 1
        if self.finished_in_heap > 64 and self.finished_in_heap * 2 > len(self.deadlines):
            # answered pushes wait in the heap until their (client-chosen) deadline: drop them
            self.deadlines = [entry for entry in self.deadlines if not entry[2].done]
            heapq.heapify(self.deadlines)
            self.finished_in_heap = 0
        key = {"ok": "replies_ok", "error": "replies_error", "timeout": "timeouts",
               "rejected": "rejected"}[outcome]
        self.stats[key] += 1
        conn = push.conn
        if conn is None or conn.closed:
            return
        header = {"op": "outcome", "id": push.id, "outcome": outcome}
        if reason:
            header["reason"] = reason
        conn.send(header, _payload_json(response) if response is not None else b"")

    # -- client requests ---------------------------------------------------------------

    def handle_request(self, conn, header, body):
        op = header.get("op")
        if op == "push":
            topic, event, timeout = header.get("topic"), header.get("event"), header.get("timeout")
            if not isinstance(topic, str) or not isinstance(event, str) or "id" not in header:
                return self._bad(conn, header, "push needs string topic and event and an id")
            if timeout is None:
                timeout = self.settings.push_timeout
            if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                    or not 0 < timeout <= MAX_PUSH_TIMEOUT):
                return self._bad(conn, header, f"timeout must be a number of seconds in "
                                               f"(0, {MAX_PUSH_TIMEOUT}]")
            if body and not is_strict_json(body):
                # a payload that is not JSON would make the server drop the whole connection
                # (close 1011) and every other push in flight with it: refuse it here
                return self._bad(conn, header, "the push payload is not UTF-8 JSON")
            self.submit(conn, header["id"], topic, event, body, float(timeout))
        elif op == "listen":
            topic = header.get("topic")
            if topic not in self.channels:
                return self._bad(conn, header, f"unknown topic {topic!r} on this worker")
            conn.subscriptions.add(topic)
            conn.send({"op": "listening", "topic": topic, "id": header.get("id")})
        elif op == "info":
            conn.send({"op": "info", "id": header.get("id")}, protocol.dumps(self.info()))
        else:
            self._bad(conn, header, f"unknown op {op!r}")

    def _bad(self, conn, header, error):
        if self.server is not None:
            self.server.stats["bad_requests"] += 1
        conn.send({"op": "error", "id": header.get("id"), "error": error})

    # -- state, acks, titles ---------------------------------------------------------

    @property
    def label(self):
        topics = list(self.channels)
        return topics[0] if len(topics) == 1 else f"{topics[0]} (+{len(topics) - 1})"

    @property
    def ready(self):
        return self.sock.connected and all(c.state == JOINED for c in self.channels.values())

    def update_state(self):
        if not self.sock.connected:
            return
        states = [c.state for c in self.channels.values()]
        if all(s == JOINED for s in states):
            self.set_state("joined")
        elif any(s == JOINING for s in states):
            self.set_state("joining")
        else:
            self.set_state("degraded")

    def set_state(self, state):
        if state == self.state:
            return
        self.state = state
        self.ctx.set_title(f"{self.label} {state}")
        self.next_ack = 0.0  # a state change is acked at once

    def ack(self):
        now = time.monotonic()
        if now < self.next_ack:
            return
        self.next_ack = now + self.ctx.ack_interval
        joined = sum(c.state == JOINED for c in self.channels.values())
        self.ctx.ack(self.state, ready=self.ready, heartbeat_age=self.sock.heartbeat_age(),
                     info={"joined": joined, "channels": len(self.channels),
                           "buffered": self.buffered, "inflight": len(self.inflight)})

    def info(self):
        return {
            "state": self.state, "ready": self.ready, "pid": os.getpid(),
            "heartbeat_age": self.sock.heartbeat_age(),
            "uptime": time.monotonic() - self.started,
            "channels": [{"topic": c.topic, "state": c.state, "last_error": c.last_error,
                          "buffered": sum(not p.done for p in c.buffer)}
                         for c in self.channels.values()],
            "buffered": self.buffered, "inflight": len(self.inflight),
            "stats": dict(self.stats), "socket": dict(self.sock.stats),
            "last_lost_reason": self.sock.last_lost_reason,
            "clients": dict(self.server.stats) if self.server is not None else {},
        }

    # -- graceful stop -------------------------------------------------------------------

    def shutdown(self):
        """Leave joined channels and answer what can be answered, within a bounded time."""
        self.set_state("stopping")
        for ch in self.channels.values():
            while ch.buffer:
                push = ch.buffer.popleft()
                if not push.done:
                    self.buffered -= 1
                    self.finish(push, "rejected", reason="worker stopping")
        deadline = time.monotonic() + min(self.settings.leave_timeout,
                                          max(0.1, self.ctx.shutdown_timeout / 2))
        leaving = set()
        if self.sock.connected:
            try:
                for ch in self.channels.values():
                    if ch.state == JOINED:
                        leaving.add(self.sock.send_leave(ch.topic))
                while (leaving or self.inflight) and time.monotonic() < deadline:
                    for msg in self.sock.poll(max(0.0, deadline - time.monotonic())):
                        leaving.discard(msg.ref if msg.event == protocol.REPLY else None)
                        if msg.event == protocol.REPLY and msg.ref in self.inflight:
                            self.dispatch([msg])
                    if self.server is not None:
                        for conn in self.server.write_fds():
                            conn.flush()
            except PoolError:
                pass
        for push in list(self.inflight.values()):
            self.finish(push, "timeout", reason="worker stopped before the reply")
        self.inflight.clear()
        if self.server is not None:
            for conn in list(self.server.clients.values()):
                conn.flush()
        self.sock.close()
        log.info("worker stopped topic=%s", self.label)


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def is_strict_json(body):
    """True if ``body`` (bytes) is UTF-8 text holding one JSON value, as a Phoenix server's
    parser accepts it: no byte-order mark, no other encoding, no NaN or Infinity."""
    try:
        text = bytes(body).decode("utf-8")
        if text.startswith("\ufeff"):
            return False
        json.loads(text, parse_constant=_refuse_constant)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


def _payload_json(payload):
    if isinstance(payload, (bytes, bytearray)):
        return protocol.dumps({"binary": payload.hex()}).encode()
    return protocol.dumps(payload).encode()


def _short(obj, limit=200):
    text = protocol.dumps(obj) if not isinstance(obj, str) else obj
    return text if len(text) <= limit else text[:limit] + "..."


class StandaloneContext:
    """The supervisor's worker seam, for running one worker without a supervisor (debugging,
    `pool run-worker`): acks go to ``on_ack`` (or nowhere), SIGTERM/SIGINT request a stop."""

    def __init__(self, slot="worker", name="pool", ack_interval=1.0, shutdown_timeout=5.0,
                 on_ack=None, install_signals=True):
        self.slot, self.name = slot, name
        self.ack_interval, self.shutdown_timeout = ack_interval, shutdown_timeout
        self.on_ack = on_ack
        self._stop = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._parent = os.getppid()
        if install_signals:
            signal.signal(signal.SIGTERM, self._request_stop)
            signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum=None, frame=None):
        self._stop = True
        try:
            os.write(self._w, b"x")
        except OSError:
            pass

    def request_stop(self):
        self._request_stop()

    @property
    def stop_requested(self):
        return self._stop

    def parent_alive(self):
        return True

    def wait_fds(self):
        return [self._r]

    def ack(self, state, *, ready=False, heartbeat_age=None, info=None):
        if self.on_ack is not None:
            self.on_ack(state, ready, heartbeat_age, info)

    def set_title(self, detail):
        pass


def run_worker(ctx, settings, channels):
    """The supervisor target: ``WorkerSpec(slot, run_worker, args=(settings, channels))``."""
    logging.getLogger("pool").debug("worker starting slot=%s", getattr(ctx, "slot", "?"))
    return Worker(settings, channels, ctx).run()
