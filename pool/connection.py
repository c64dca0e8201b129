"""`pool.Socket`: a blocking Phoenix Channels client whose every blocking operation is bounded.

- connect: TCP connect + TLS + HTTP upgrade within ``connect_timeout`` in total;
- send: each frame is written within ``send_timeout`` in total (a loop of socket calls, each
  given only the time left), so a peer that drains a few bytes per second cannot stretch it;
  after a send timeout the connection is aborted, never reused (a frame may be half-written);
- receive: ``poll(timeout)`` waits at most ``timeout``;
- heartbeat: sent every ``heartbeat_interval`` whatever else arrives, its reply matched by ref;
  no reply within ``heartbeat_timeout`` means the connection is dead.

A lost connection raises `ConnectionLost` (or its subclass `SendTimeout`) and leaves the Socket
disconnected; `connect()` again to go on. Teardown never blocks: a suspect connection is
aborted with SO_LINGER 0 (a reset), never closed with a close frame.

The Socket is single-threaded: use one Socket from one thread at a time.
"""
import base64
import logging
import select
import signal
import socket
import ssl
import struct
import threading
import time
from collections import deque
from contextlib import contextmanager
from urllib.parse import urlencode, urlsplit, urlunsplit

import websocket
from websocket import ABNF

from . import protocol
from .errors import (
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    JoinTimeout,
    NotJoined,
    PoolError,
    ProtocolError,
    PushTimeout,
    ReplyError,
    SendTimeout,
)
from .protocol import Message

log = logging.getLogger("pool.connection")

TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
MAX_FRAMES_PER_READ = 256
CONNECTING, OPEN, CLOSED = "connecting", "open", "closed"

# Channel states (phoenix.js channel.js)
JOINING, JOINED, ERRORED, LEAVING = "joining", "joined", "errored", "leaving"


class _Channel:
    __slots__ = ("topic", "join_ref", "state", "leave_ref")

    def __init__(self, topic, join_ref):
        self.topic = topic
        self.join_ref = join_ref
        self.state = JOINING
        self.leave_ref = None


class _ConnectDeadline(BaseException):
    """Raised from SIGALRM to end a handshake that overran connect_timeout (BaseException so
    websocket-client's ``except Exception`` blocks cannot swallow it)."""


@contextmanager
def _alarm(seconds):
    """Bound a block by wall time with ITIMER_REAL when we own the main thread.

    Per-call socket timeouts bound each read, but a server dripping one header byte per
    interval could stretch an upgrade without limit; the alarm caps the whole handshake.
    In other threads signals cannot be used and only the per-call bounds apply.
    """
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def fire(signum, frame):
        raise _ConnectDeadline()

    caller_delay, caller_interval = signal.getitimer(signal.ITIMER_REAL)
    if 0 < caller_delay <= seconds:  # the caller's own alarm fires first: leave it alone
        yield
        return
    try:
        previous = signal.signal(signal.SIGALRM, fire)
    except ValueError:  # not in the main interpreter
        yield
        return
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if caller_delay > 0:  # give back what is left of the caller's timer
            left = caller_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), caller_interval)


def endpoint_url(url, params=None, vsn=protocol.V2):
    """``<endpoint>/websocket?<params>&vsn=<vsn>`` (PROTOCOL.md rules 1-2, checklist K2)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"url must start with ws:// or wss://, got {parts.scheme!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    if callable(params):
        params = params()
    query = [(k, v) for k, v in (params or {}).items()]
    if parts.query:
        query = [tuple(p.split("=", 1)) if "=" in p else (p, "") for p in parts.query.split("&")] + query
    query.append(("vsn", vsn))
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def redact_url(url):
    """The URL without its query string: connect params may hold secrets."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def auth_subprotocols(token):
    """``["phoenix", "base64url.bearer.phx.<b64url(token), no padding>"]`` (rule 3, K4)."""
    encoded = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
    return ["phoenix", f"base64url.bearer.phx.{encoded}"]


def abort_socket(sock):
    """Close with a TCP reset: never blocks, drops whatever the kernel still has queued."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Socket:
    """A bounded, blocking Phoenix Channels connection (see the module docstring)."""

    def __init__(self, url, *, params=None, vsn=protocol.V2, heartbeat_interval=25.0,
                 heartbeat_timeout=None, send_timeout=10.0, connect_timeout=10.0,
                 push_timeout=10.0, headers=None, sslopt=None, auth_token=None, origin=None,
                 sndbuf=64 * 1024, inbox_limit=10_000, max_message_size=16 * 2**20):
        for name, value in (("heartbeat_interval", heartbeat_interval),
                            ("send_timeout", send_timeout), ("connect_timeout", connect_timeout),
                            ("push_timeout", push_timeout)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if heartbeat_timeout is not None and heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, got {heartbeat_timeout!r}")
        endpoint_url(url, {}, vsn)  # validates the scheme early
        self.url = url
        self.params = params
        self.vsn = vsn
        self.serializer = protocol.serializer_for(vsn)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout or heartbeat_interval)
        self.send_timeout = float(send_timeout)
        self.connect_timeout = float(connect_timeout)
        self.push_timeout = float(push_timeout)
        self.headers = list(headers or [])
        self.sslopt = dict(sslopt or {})
        self.auth_token = auth_token
        self.origin = origin
        self.sndbuf = sndbuf
        self.max_message_size = max_message_size
        self.refs = protocol.RefCounter()
        self.channels = {}
        self.stats = {"connects": 0, "malformed": 0, "stale_dropped": 0, "unknown_dropped": 0,
                      "inbox_dropped": 0, "heartbeats_sent": 0, "heartbeat_replies": 0,
                      "frames_in": 0, "frames_out": 0}
        self.last_lost_reason = None
        self._ws = None
        self._inbox = deque()
        self._inbox_limit = inbox_limit
        self._fragments = None
        self._more_buffered = False
        self._hb_ref = None
        self._hb_sent_at = 0.0
        self._hb_next_at = 0.0
        self._last_hb_reply = None
        self._connected_at = None
        self._pings = {}

    # -- connection ------------------------------------------------------------------

    @property
    def connected(self):
        return self._ws is not None

    def connection_state(self):
        """"open" or "closed" (K8; this blocking client is never observed "connecting")."""
        return OPEN if self._ws is not None else CLOSED

    def fileno(self):
        if self._ws is None:
            raise ConnectionLost("not connected")
        return self._ws.sock.fileno()

    @property
    def safe_url(self):
        return redact_url(endpoint_url(self.url, {}, self.vsn))

    def connect(self):
        """Open the connection (idempotent). Raises `ConnectTimeout` or `ConnectFailed`."""
        if self._ws is not None:
            return
        url = endpoint_url(self.url, self.params, self.vsn)
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname
        port = parts.port or (443 if secure else 80)
        start = time.monotonic()
        deadline = start + self.connect_timeout
        sock = None
        try:
            with _alarm(self.connect_timeout):
                sock = socket.create_connection((host, port), timeout=self.connect_timeout)
                self._tune(sock)
                if secure:
                    sock.settimeout(max(0.001, deadline - time.monotonic()))
                    sock = self._ssl_context().wrap_socket(sock, server_hostname=host)
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                ws = websocket.WebSocket(skip_utf8_validation=True)
                options = {"socket": sock, "timeout": max(0.001, deadline - time.monotonic()),
                           "header": self.headers}
                if self.origin:
                    options["origin"] = self.origin
                else:
                    options["suppress_origin"] = True
                if self.auth_token is not None:
                    token = self.auth_token() if callable(self.auth_token) else self.auth_token
                    options["subprotocols"] = auth_subprotocols(token)
                ws.connect(url, **options)
        except websocket.WebSocketBadStatusException as exc:
            abort_socket(sock)
            raise ConnectFailed(f"{self.safe_url}: upgrade rejected with HTTP {exc.status_code}",
                                status=exc.status_code) from None
        except (_ConnectDeadline, socket.timeout, TimeoutError,
                websocket.WebSocketTimeoutException):
            abort_socket(sock)
            raise ConnectTimeout(
                f"{self.safe_url}: no connection within connect_timeout={self.connect_timeout:g}s"
            ) from None
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            abort_socket(sock)
            raise ConnectFailed(f"{self.safe_url}: {type(exc).__name__}: {_safe_reason(exc)}") from None
        ws.sock.settimeout(0)
        self._limit_frame_size(ws)
        self._ws = ws
        self._reset_connection_state()
        self.stats["connects"] += 1

    def _limit_frame_size(self, ws):
        """Refuse a frame longer than max_message_size before its payload is read: websocket-client
        reads a frame's declared length whole, so the check must sit in front of that read."""
        buffer = getattr(ws, "frame_buffer", None)
        recv_strict = getattr(buffer, "recv_strict", None)
        if recv_strict is None:
            return
        limit = self.max_message_size

        def bounded(bufsize):
            if bufsize > limit:
                raise websocket.WebSocketPayloadException(
                    f"frame of {bufsize} bytes is over max_message_size={limit}")
            return recv_strict(bufsize)
        buffer.recv_strict = bounded

    def _tune(self, sock):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
        try:  # the kernel aborts a connection whose sent data stays unacknowledged this long
            sock.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, int(self.send_timeout * 1000))
        except OSError:
            pass

    def _ssl_context(self):
        if "context" in self.sslopt:
            return self.sslopt["context"]
        ctx = ssl.create_default_context(cafile=self.sslopt.get("ca_certs"))
        if self.sslopt.get("check_hostname") is False:
            ctx.check_hostname = False
        if "cert_reqs" in self.sslopt:
            ctx.verify_mode = self.sslopt["cert_reqs"]
        return ctx

    def _reset_connection_state(self):
        now = time.monotonic()
        self.refs = protocol.RefCounter()
        self.channels = {}
        self._inbox.clear()
        self._fragments = None
        self._more_buffered = False
        self._hb_ref = None
        self._hb_next_at = now + self.heartbeat_interval
        self._last_hb_reply = None
        self._connected_at = now

    def heartbeat_age(self):
        """Seconds since the last heartbeat reply (since connect if none yet); None if closed."""
        if self._ws is None:
            return None
        return time.monotonic() - (self._last_hb_reply or self._connected_at)

    def abort(self, reason="aborted"):
        """Drop the connection at once with a reset. Never blocks."""
        ws, self._ws = self._ws, None
        if ws is not None:
            self.last_lost_reason = reason
            abort_socket(ws.sock)
            for topic, ch in list(self.channels.items()):
                if ch.state == LEAVING:  # C14/K16: a leave ends locally when it cannot be sent
                    del self.channels[topic]
                else:
                    ch.state = ERRORED

    def _lost(self, reason):
        self.abort(reason)
        log.warning("connection lost url=%s reason=%s", self.safe_url, reason)
        return ConnectionLost(reason)

    def close(self):
        """Close the connection: a bounded close frame if it is healthy, then a reset."""
        if self._ws is None:
            return
        try:
            self._write(ABNF.create_frame(struct.pack("!H", 1000), ABNF.OPCODE_CLOSE).format(),
                        min(1.0, self.send_timeout))
        except PoolError:
            pass
        self.abort("closed")
        self.channels = {}

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sending -----------------------------------------------------------------

    def _write(self, data, timeout):
        """Write all of ``data`` within ``timeout`` seconds in total, or abort the connection."""
        if self._ws is None:
            raise ConnectionLost("not connected")
        sock = self._ws.sock  # non-blocking (timeout 0) between calls
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        poller = None
        try:
            while view:
                try:
                    sent = sock.send(view)  # the usual case: the kernel takes it at once
                    view = view[sent:]
                    continue
                except (BlockingIOError, ssl.SSLWantWriteError):
                    events = select.POLLOUT
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                if poller is None:
                    poller = select.poll()
                poller.register(sock, events)  # register again = modify
                poller.poll(remaining * 1000)
        except (socket.timeout, TimeoutError):
            self.abort("send timeout")
            log.warning("send timeout url=%s send_timeout=%s", self.safe_url, timeout)
            raise SendTimeout(f"a frame could not be sent within send_timeout={timeout:g}s; "
                              "the connection was discarded") from None
        except (OSError, ValueError) as exc:
            raise self._lost(f"send failed: {type(exc).__name__}: {_safe_reason(exc)}") from None
        self.stats["frames_out"] += 1

    def _send_text(self, text):
        self._write(ABNF.create_frame(text, ABNF.OPCODE_TEXT).format(), self.send_timeout)

    def _send_binary(self, data):
        self._write(ABNF.create_frame(data, ABNF.OPCODE_BINARY).format(), self.send_timeout)

    def send_message(self, topic, event, payload=None, *, join_ref=None, ref=None,
                     payload_json=None, binary=None):
        """Send one message; returns its ref. ``payload_json`` (JSON text) is placed in the
        frame as-is; ``binary`` (bytes) sends a V2 binary push."""
        ref = ref or self.refs.next()
        if binary is not None:
            self._send_binary(self.serializer.encode_binary(join_ref, ref, topic, event, binary))
        elif payload_json is not None:
            if isinstance(payload_json, (bytes, bytearray)):
                payload_json = payload_json.decode("utf-8")
            self._send_text(self.serializer.encode_raw(join_ref, ref, topic, event, payload_json))
        else:
            self._send_text(self.serializer.encode(
                Message(topic, event, {} if payload is None else payload, ref, join_ref)))
        return ref

    def send_join(self, topic, payload=None):
        """Send ``phx_join``; returns the new join_ref. A topic joined before is re-joined: the
        server then closes the old instance with a ``phx_close`` carrying the old join_ref,
        which is dropped as stale (PROTOCOL.md rule 19)."""
        if callable(payload):  # C1: params may be a callable, evaluated at each join
            payload = payload()
        join_ref = self.refs.next()
        text = self.serializer.encode(Message(topic, protocol.JOIN, {} if payload is None else payload,
                                              join_ref, join_ref))
        self.channels[topic] = _Channel(topic, join_ref)
        self._send_text(text)
        return join_ref

    def send_push(self, topic, event, payload=None, *, payload_json=None, binary=None):
        """Send a push to a joined topic, with its join_ref; returns the push's ref."""
        ch = self.channels.get(topic)
        if ch is None or ch.state != JOINED:
            raise NotJoined(f"cannot push to {topic!r}: not joined")
        return self.send_message(topic, event, payload, join_ref=ch.join_ref,
                                 payload_json=payload_json, binary=binary)

    def send_leave(self, topic):
        """Send ``phx_leave`` with the channel's join_ref; returns its ref (None if not joined)."""
        ch = self.channels.get(topic)
        if ch is None:
            return None
        ch.state = LEAVING
        if self._ws is None:
            del self.channels[topic]
            return None
        ch.leave_ref = self.send_message(topic, protocol.LEAVE, {}, join_ref=ch.join_ref)
        return ch.leave_ref

    def _send_heartbeat(self):
        ref = self.refs.next()
        self._send_text(self.serializer.encode(protocol.heartbeat(ref)))
        self._hb_ref = ref
        self._hb_sent_at = time.monotonic()
        self.stats["heartbeats_sent"] += 1

    # -- receiving ---------------------------------------------------------------

    def next_deadline(self):
        """The monotonic time by which `poll` must run again to keep the heartbeat on time."""
        if self._hb_ref is not None:
            return self._hb_sent_at + self.heartbeat_timeout
        return self._hb_next_at

    def service(self):
        """Send the heartbeat when due; raise `ConnectionLost` when its reply is overdue."""
        if self._ws is None:
            raise ConnectionLost("not connected")
        now = time.monotonic()
        if self._hb_ref is not None:
            if now - self._hb_sent_at >= self.heartbeat_timeout:
                raise self._lost("heartbeat timeout")
        elif now >= self._hb_next_at:
            self._send_heartbeat()

    def poll(self, timeout=0.0, readable=False):
        """Wait up to ``timeout`` seconds for inbound messages and return them (possibly none).

        Services the heartbeat meanwhile. Replies to our own pushes are returned too
        (``event == "phx_reply"``); heartbeat replies and stale messages are not.
        ``readable=True`` says the caller's own poll just found the socket readable (the
        first read then skips waiting).
        """
        if readable:
            self._more_buffered = True
        deadline = time.monotonic() + max(0.0, timeout)
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        while True:
            self.service()
            now = time.monotonic()
            wait = 0.0 if out else max(0.0, min(deadline, self.next_deadline()) - now)
            out.extend(self._read(wait))
            if out or time.monotonic() >= deadline:
                return out

    def wants_read(self):
        """True if data is already buffered in user space (poll(0) now, do not select first)."""
        return self._more_buffered or bool(self._inbox)

    def _read(self, wait):
        """Wait up to ``wait`` for the socket, read the frames available, return routed messages."""
        sock = self._ws.sock
        if not self._more_buffered:
            poller = select.poll()  # not select(): it cannot wait on descriptors >= 1024
            poller.register(sock, select.POLLIN)
            try:
                ready = poller.poll(wait * 1000)
            except (OSError, ValueError) as exc:
                raise self._lost(f"poll failed: {exc}") from None
            if not ready:
                return []
        self._more_buffered = False
        out = []
        for _ in range(MAX_FRAMES_PER_READ):
            try:
                frame = self._ws.recv_frame()
            except (BlockingIOError, ssl.SSLWantReadError):
                return out
            except websocket.WebSocketTimeoutException:
                # reads here never wait, so this is the kernel's ETIMEDOUT (which websocket-client
                # reports as a timeout): TCP_USER_TIMEOUT found the peer stopped acknowledging
                raise self._lost("send timeout (the peer stopped acknowledging; TCP_USER_TIMEOUT)") from None
            except websocket.WebSocketConnectionClosedException:
                raise self._lost("connection closed by peer") from None
            except websocket.WebSocketPayloadException as exc:
                raise self._lost(f"{exc}") from None
            except websocket.WebSocketProtocolException as exc:
                self.stats["malformed"] += 1
                raise self._lost(f"malformed WebSocket frame: {exc}") from None
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise self._lost(f"receive failed: {type(exc).__name__}: {_safe_reason(exc)}") from None
            msg = self._on_frame(frame)
            if msg is not None:
                out.append(msg)
        self._more_buffered = True
        return out

    def _on_frame(self, frame):
        self.stats["frames_in"] += 1
        op = frame.opcode
        if op in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY, ABNF.OPCODE_CONT):
            data = self._assemble(frame)
            if data is None:
                return None
            try:
                msg = self.serializer.decode(data)
            except ProtocolError as exc:
                self.stats["malformed"] += 1
                log.warning("malformed frame url=%s error=%s count=%d",
                            self.safe_url, exc, self.stats["malformed"])
                raise self._lost(f"malformed frame from server: {exc}") from None
            return self._route(msg)
        if op == ABNF.OPCODE_PING:
            self._write(ABNF.create_frame(frame.data, ABNF.OPCODE_PONG).format(), self.send_timeout)
            return None
        if op == ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            raise self._lost(f"server closed the connection (code {code})")
        return None  # pong

    def _assemble(self, frame):
        if frame.opcode == ABNF.OPCODE_CONT:
            if self._fragments is None:
                raise self._lost("continuation frame without a start")
            self._fragments[1].append(frame.data)
        elif not frame.fin:
            self._fragments = (frame.opcode, [frame.data])
        else:
            return frame.data.decode("utf-8", "replace") if frame.opcode == ABNF.OPCODE_TEXT else frame.data
        if sum(map(len, self._fragments[1])) > self.max_message_size:
            raise self._lost(f"message larger than max_message_size={self.max_message_size}")
        if not frame.fin:
            return None
        opcode, parts = self._fragments
        self._fragments = None
        data = b"".join(parts)
        return data.decode("utf-8", "replace") if opcode == ABNF.OPCODE_TEXT else data

    def _route(self, msg):
        """Channel bookkeeping; returns the message for the caller, or None if it is swallowed."""
        if msg.topic == protocol.PHOENIX_TOPIC and msg.event == protocol.REPLY:
            if msg.ref is not None and msg.ref == self._hb_ref:
                self._hb_ref = None
                self._last_hb_reply = time.monotonic()
                self._hb_next_at = max(self._hb_sent_at + self.heartbeat_interval,
                                       self._last_hb_reply)
                self.stats["heartbeat_replies"] += 1
            elif msg.ref in self._pings:
                self._pings[msg.ref] = time.monotonic()
            return None
        ch = self.channels.get(msg.topic)
        if ch is None:
            if msg.event == protocol.REPLY and msg.join_ref is None:
                return msg  # e.g. "unmatched topic" replies, sent with join_ref null
            self.stats["unknown_dropped"] += 1
            return None
        stale = msg.join_ref is not None and msg.join_ref != ch.join_ref
        if (msg.join_ref is None and msg.event in (protocol.CLOSE, protocol.ERROR)
                and msg.ref is not None and msg.ref != ch.join_ref):
            stale = True  # V1 sends no join_ref, but these carry it as their ref
        if stale:
            self.stats["stale_dropped"] += 1
            log.debug("dropping outdated message topic=%s event=%s", msg.topic, msg.event)
            return None
        if msg.event == protocol.REPLY:
            if msg.ref == ch.join_ref and ch.state == JOINING:
                ch.state = JOINED if msg.status == "ok" else ERRORED
            elif msg.ref is not None and msg.ref == ch.leave_ref:
                del self.channels[msg.topic]
        elif msg.event == protocol.ERROR:
            ch.state = ERRORED
        elif msg.event == protocol.CLOSE:
            del self.channels[msg.topic]
        return msg

    # -- blocking request/reply ----------------------------------------------------

    def _await_reply(self, ref, timeout):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            self.service()
            wait = max(0.0, min(deadline, self.next_deadline()) - time.monotonic())
            found = None
            for msg in self._read(wait):
                if found is None and msg.event == protocol.REPLY and msg.ref == ref:
                    found = msg
                    continue
                self._stash(msg)
            if found is not None:
                return found
            if remaining <= 0:
                return None

    def _stash(self, msg):
        """Keep a message read while waiting for something else, for the next poll (bounded)."""
        if len(self._inbox) >= self._inbox_limit:
            self._inbox.popleft()
            self.stats["inbox_dropped"] += 1
        self._inbox.append(msg)

    def join(self, topic, payload=None, timeout=None):
        """Join ``topic``; returns the join reply's response. Raises `ReplyError` if refused,
        `JoinTimeout` if no reply within ``timeout`` (default ``push_timeout``)."""
        self.connect()
        timeout = self.push_timeout if timeout is None else timeout
        join_ref = self.send_join(topic, payload)
        reply = self._await_reply(join_ref, timeout)
        if reply is None:
            try:  # C4: tell the server to drop the half-made join
                self.send_leave(topic)
            finally:
                self.channels.pop(topic, None)
            raise JoinTimeout(f"no reply to join {topic!r} within {timeout:g}s")
        if reply.status != "ok":
            self.channels.pop(topic, None)
            raise ReplyError(reply.response, topic, protocol.JOIN)
        return reply.response

    def push(self, topic, event, payload=None, timeout=None):
        """Push to a joined topic and wait for the reply; returns its response. Raises
        `ReplyError` on an error reply, `PushTimeout` when none comes within ``timeout``."""
        timeout = self.push_timeout if timeout is None else timeout
        ref = self.send_push(topic, event, payload)
        reply = self._await_reply(ref, timeout)
        if reply is None:
            raise PushTimeout(f"no reply to {event!r} on {topic!r} within {timeout:g}s")
        if reply.status != "ok":
            raise ReplyError(reply.response, topic, event)
        return reply.response

    def leave(self, topic, timeout=None):
        """Leave ``topic``; the channel is closed locally on the ok reply or on timeout (C14)."""
        if topic not in self.channels:
            return
        timeout = self.push_timeout if timeout is None else timeout
        ref = self.send_leave(topic)
        if ref is not None:
            self._await_reply(ref, timeout)
        self.channels.pop(topic, None)

    def ping(self, timeout=None):
        """Round-trip time of one heartbeat in seconds (K19), or None when not connected."""
        if self._ws is None:
            return None
        timeout = self.push_timeout if timeout is None else timeout
        start = time.monotonic()
        ref = self.refs.next()
        self._pings[ref] = None
        try:
            self._send_text(self.serializer.encode(protocol.heartbeat(ref)))
            deadline = start + timeout
            while self._pings[ref] is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PushTimeout(f"no heartbeat reply within {timeout:g}s")
                for msg in self._read(remaining):
                    self._stash(msg)
            return self._pings[ref] - start
        finally:
            self._pings.pop(ref, None)


def _safe_reason(exc):
    """An exception's text with anything after a '?' cut, so a URL's query never leaks."""
    text = str(exc)
    return text.split("?", 1)[0] if "?" in text else text
