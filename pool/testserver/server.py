"""PhoenixServer: a Phoenix Channels server for tests, the demo and benchmarks, with fault switches.

One thread accepts; each connection gets one thread that does all of its reading. Sends come
from any thread (the reader, `slow` timers, the test), serialized by a per-connection lock and
bounded by the socket timeout: a send that times out aborts its connection, so nothing a client
does can wedge the server. See docs/testserver.md.
"""
import collections
import itertools
import re
import socket
import struct
import threading
import time
import traceback

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Ping, Request, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from . import _wire

POLL = 0.1  # how often an idle reader looks at its flags (stop, closing, stop_reading)
CLOSE_GRACE = 1.0  # how long a closing connection waits for the client's close frame
MAX_MESSAGE = 16 * 2**20
VSN = re.compile(r"([12])\.\d+\.\d+")

FAULTS = {
    "hang_upgrade": False,
    "reject_upgrade": None,
    "reject_joins": False,
    "drop_heartbeats": False,
    "stop_reading": False,
}
STATS = (
    "connections", "upgrades_rejected", "heartbeats", "heartbeats_dropped", "joins",
    "joins_rejected", "pushes", "leaves", "stale_dropped", "malformed", "closed_idle",
)
GARBAGE = {"text": "this is not json {", "binary": b"\xff\xfe\x00garbage", "array": "[1,2,3]"}
_CHANNEL = object()


class Faults:
    """Fault switches. The server's are the defaults; a connection's non-None values override them."""

    __slots__ = tuple(FAULTS)  # a misspelt switch raises instead of silently doing nothing

    def __init__(self, **values):
        for name, default in FAULTS.items():
            setattr(self, name, values.pop(name, default))
        if values:
            raise TypeError(f"unknown faults: {', '.join(values)}")

    def _reset(self, inherit=False):
        for name, default in FAULTS.items():
            setattr(self, name, None if inherit else default)

    def __repr__(self):
        return "Faults(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in FAULTS) + ")"


class Connection:
    """One accepted client socket. Created by the server; tests use the public methods."""

    def __init__(self, server, sock, conn_id):
        self.id = conn_id
        self.path = None
        self.vsn = None
        self.params = {}
        self.auth_token = None
        self.upgraded = False
        self._subprotocol = None
        self.faults = Faults(**dict.fromkeys(FAULTS))
        self._server = server
        self._sock = sock
        self._ws = WSConnection(ConnectionType.SERVER)
        self._thread = None
        self._send_lock = threading.Lock()
        self._final_lock = threading.Lock()
        self._done = False
        self._closed = threading.Event()
        self._closing_since = None
        self._last_recv = time.monotonic()
        self._channels = {}  # topic -> join_ref; only the reader thread changes it
        self._timers = set()
        self._fragments = []
        self._fragment_size = 0

    def __repr__(self):
        state = "closed" if self.closed else "open" if self.upgraded else "handshake"
        return f"<Connection {self.id} {state} vsn={self.vsn} joined={sorted(self._channels)}>"

    # -- public API ------------------------------------------------------------------------

    @property
    def joined(self):
        return dict(self._channels)

    @property
    def closed(self):
        return self._closed.is_set()

    @property
    def vsn2(self):
        return bool(self.vsn and self.vsn.startswith("2."))

    def push(self, topic, event, payload, join_ref=_CHANNEL):
        """Server push [join_ref, null, topic, event, payload]; join_ref defaults to the channel's
        (None if the topic is not joined). A bytes payload goes as a V2 binary push (kind 0)."""
        if join_ref is _CHANNEL:
            join_ref = self._channels.get(topic)
        return self._push(join_ref, topic, event, payload)

    def send_binary_push(self, topic, event, data, join_ref=_CHANNEL):
        return self.push(topic, event, bytes(data), join_ref)

    def send_binary_broadcast(self, topic, event, data):
        return self._broadcast(topic, event, bytes(data))

    def send_raw(self, data):
        """Send one text (str) or binary (bytes) frame as it is."""
        return self._send_frame(data)

    def send_garbage(self, kind="text"):
        return self._send_frame(GARBAGE[kind])

    def close(self, code=1000, reason=""):
        """Send a close frame, wait (briefly) for the client's, then close the socket."""
        self._start_close(code, reason)

    def abort(self):
        """Close with SO_LINGER (on, 0): the client gets a reset, no close frame."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, ValueError):
            pass
        self._finalize()

    def stop_reading(self):
        self.faults.stop_reading = True

    def resume_reading(self):
        self.faults.stop_reading = False

    def wait_closed(self, timeout=5.0):
        return self._closed.wait(timeout)

    # -- sending ---------------------------------------------------------------------------

    def _send_event(self, event):
        with self._send_lock:
            if self._done:
                return False
            try:
                data = self._ws.send(event)
            except LocalProtocolError:  # not open (yet, or any more)
                return False
            try:
                self._sock.sendall(data)
                return True
            except (OSError, ValueError):  # includes the send timeout
                pass
        self.abort()  # a frame may be half-written: the connection is unusable
        return False

    def _send_frame(self, data):
        if isinstance(data, str):
            return self._send_event(TextMessage(data=data))
        return self._send_event(BytesMessage(data=bytes(data)))

    def _send_json(self, join_ref, ref, topic, event, payload):
        return self._send_frame(_wire.encode_json(self.vsn2, join_ref, ref, topic, event, payload))

    def _check_binary(self):
        if not self.vsn2:
            raise ValueError("binary frames need a V2 (vsn 2.x) connection")

    def _push(self, join_ref, topic, event, payload):
        if isinstance(payload, (bytes, bytearray)):
            self._check_binary()
            return self._send_frame(_wire.encode_binary_push(join_ref, topic, event, payload))
        return self._send_json(join_ref, None, topic, event, payload)

    def _reply(self, join_ref, ref, topic, status, response):
        if isinstance(response, (bytes, bytearray)):
            self._check_binary()
            return self._send_frame(_wire.encode_binary_reply(join_ref, ref, topic, status, response))
        return self._send_json(join_ref, ref, topic, "phx_reply", {"status": status, "response": response})

    def _broadcast(self, topic, event, payload):
        if isinstance(payload, (bytes, bytearray)):
            self._check_binary()
            return self._send_frame(_wire.encode_binary_broadcast(topic, event, payload))
        return self._send_json(None, None, topic, event, payload)

    # -- lifecycle -------------------------------------------------------------------------

    def _fault(self, name):
        value = getattr(self.faults, name)
        return getattr(self._server.faults, name) if value is None else value

    def _start_close(self, code, reason):
        if self._done or self._closing_since is not None:
            return
        if not self.upgraded:
            self._finalize()
            return
        self._closing_since = time.monotonic()
        self._send_event(CloseConnection(code=code, reason=reason or None))

    def _finalize(self):
        with self._final_lock:
            if self._done:
                return
            self._done = True
            try:
                # A select() in the reader holds a reference to the socket, which would delay
                # the close (and an abort's reset) until it returns; SHUT_RD wakes it first.
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            self._sock.close()
        for timer in list(self._timers):
            timer.cancel()
        self._closed.set()
        self._server._changed()

    def _run(self):
        try:
            if self._handshake():
                self._read_loop()
        except OSError:  # the socket was reset, timed out, or closed under us
            pass
        except Exception:
            if not self._done:  # a bug in the server: show it, but keep the server running
                traceback.print_exc()
        finally:
            self._finalize()

    # -- handshake -------------------------------------------------------------------------

    def _handshake(self):
        srv = self._server
        if srv.ssl_context is not None:
            with self._final_lock:
                if self._done:
                    return False
                self._sock = srv.ssl_context.wrap_socket(
                    self._sock, server_side=True, do_handshake_on_connect=False)
            self._sock.do_handshake()  # bounded by the socket timeout
        got = _wire.read_head(self._sock, time.monotonic() + srv.idle_timeout, lambda: self._done)
        if got is None:
            return False
        head, rest = got
        problem = self._parse_request(head)
        srv._register(self)
        if self._fault("hang_upgrade"):
            self._hang()
            return False
        status = self._fault("reject_upgrade") or problem or self._check_connect()
        if status:
            srv._count("upgrades_rejected")
            with self._send_lock:
                self._sock.sendall(_wire.http_response(status))
            return False
        with self._send_lock:  # flag first: the client may act on the 101 before sendall returns
            self.upgraded = True
            self._last_recv = time.monotonic()
            self._sock.sendall(self._ws.send(AcceptConnection(subprotocol=self._subprotocol)))
        srv._changed()
        if rest:
            self._feed(rest)
        return True

    def _parse_request(self, head):
        """Fill in path, params, vsn and auth_token; returns the HTTP status to refuse with, or None."""
        target = _wire.request_target(head)
        if target is None:
            return 400
        self.path, self.params = _wire.parse_target(target)
        self.vsn = self.params.pop("vsn", "1.0.0")
        if self.path != self._server.path + "/websocket":
            return 404
        if not VSN.fullmatch(self.vsn):
            return 403
        try:
            self._ws.receive_data(head)
            request = next(e for e in self._ws.events() if isinstance(e, Request))
        except (RemoteProtocolError, StopIteration):  # not a WebSocket upgrade request
            return 400
        self._subprotocol = "phoenix" if "phoenix" in request.subprotocols else None
        try:
            self.auth_token = _wire.decode_token(request.subprotocols)
        except ValueError:
            return 403
        return None

    def _check_connect(self):
        check = self._server.connect_check
        if check is None:
            return None
        try:
            return None if check(dict(self.params), self.auth_token) else 403
        except Exception:
            traceback.print_exc()
            return 403

    def _hang(self):
        """Read and discard until the client goes away or the server stops; never answer."""
        while not self._done:
            if _wire.wait_readable(self._sock, POLL) and not self._sock.recv(65536):
                return

    # -- reading ---------------------------------------------------------------------------

    def _read_loop(self):
        srv = self._server
        while not self._done:
            closing = self._closing_since is not None
            if closing and (self._ws.state is ConnectionState.CLOSED
                            or time.monotonic() - self._closing_since > CLOSE_GRACE):
                return
            if self._fault("stop_reading"):
                if closing:
                    return
                self._last_recv = time.monotonic()  # the idle clock runs only while reading
                self._closed.wait(POLL)
                continue
            wait = POLL
            if not closing:
                idle = self._last_recv + srv.idle_timeout - time.monotonic()
                if idle <= 0:
                    srv._count("closed_idle")
                    self._start_close(1000, "")
                    continue
                wait = min(wait, idle)
            # Re-check the switch after the wait: a test that sets stop_reading and then makes
            # the client send must find that data unread.
            if not _wire.wait_readable(self._sock, wait) or self._fault("stop_reading"):
                continue
            try:
                data = self._sock.recv(65536)
            except socket.timeout:  # TLS: a partial record
                continue
            if not data:
                return
            self._last_recv = time.monotonic()
            self._feed(data)

    def _feed(self, data):
        try:
            self._ws.receive_data(data)
        except LocalProtocolError:  # bytes after the close handshake
            return
        for event in self._ws.events():
            if self._done:
                return
            if isinstance(event, Ping):
                self._send_event(event.response())
            elif isinstance(event, CloseConnection):
                self._on_close_frame(event)
            elif isinstance(event, (TextMessage, BytesMessage)) and self._closing_since is None:
                self._on_data(event)

    def _on_close_frame(self, event):
        if self._ws.state is ConnectionState.REMOTE_CLOSING:  # the client closed: answer it
            self._send_event(event.response())
        elif self._ws.state is ConnectionState.OPEN:  # wsproto found a framing error
            self._server._count("malformed")
            self._send_event(CloseConnection(code=event.code))
        if self._closing_since is None:
            self._closing_since = time.monotonic()

    def _on_data(self, event):
        srv = self._server
        self._fragments.append(event.data)
        self._fragment_size += len(event.data)
        if self._fragment_size > MAX_MESSAGE:
            srv._count("malformed")
            self._start_close(1009, "message too big")
            return
        if not event.message_finished:
            return
        parts, self._fragments, self._fragment_size = self._fragments, [], 0
        try:
            if isinstance(event, TextMessage):
                msg = _wire.decode_text("".join(parts), self.vsn2)
            elif self.vsn2:
                msg = _wire.decode_binary(b"".join(parts))
            else:
                raise _wire.Malformed("binary frame on a V1 socket")
        except _wire.Malformed:
            srv._count("malformed")
            self._start_close(1011, "")  # like Phoenix: the whole connection goes
            return
        srv._record(self.id, msg)
        self._dispatch(**msg)

    # -- Phoenix semantics -----------------------------------------------------------------

    def _dispatch(self, join_ref, ref, topic, event, payload):
        srv = self._server
        if topic == "phoenix" and event == "heartbeat":
            srv._count("heartbeats")
            if self._fault("drop_heartbeats"):
                srv._count("heartbeats_dropped")
            else:
                self._reply(None, ref, topic, "ok", {})
            return
        if event == "phx_join":
            self._join(join_ref or ref, ref, topic, payload)
            return
        channel = self._channels.get(topic)
        if channel is None:
            if event == "phx_leave":
                self._reply(join_ref, ref, topic, "ok", {})
            else:
                self._reply(None, ref, topic, "error", {"reason": "unmatched topic"})
            return
        if join_ref is not None and join_ref != channel:
            srv._count("stale_dropped")
            return
        if event == "phx_leave":
            srv._count("leaves")
            self._reply(channel, ref, topic, "ok", {})
            self._end_channel(topic, "phx_close", {})
            return
        srv._count("pushes")
        self._channel_event(channel, ref, topic, event, payload)

    def _join(self, join_ref, ref, topic, payload):
        srv = self._server
        if topic.startswith("nope:"):
            srv._count("joins_rejected")
            self._reply(None, ref, topic, "error", {"reason": "unmatched topic"})
            return
        old = self._channels.pop(topic, None)
        options = payload if isinstance(payload, dict) else {}
        reason = None
        if self._fault("reject_joins"):
            reason = "join rejected"
        elif "reject" in options:
            reason = options["reject"] or "join rejected"
        elif len(self._channels) >= srv.max_channels:
            reason = "too many channels joined"
        if reason is None:
            self._channels[topic] = join_ref
            srv._count("joins")
            self._reply(join_ref, ref, topic, "ok", options.get("response", {}))
        else:
            srv._count("joins_rejected")
            self._reply(join_ref, ref, topic, "error", {"reason": reason})
        if old is not None:  # Phoenix 1.7 order: the new join's reply first, then the old close
            self._send_json(old, old, topic, "phx_close", {})

    def _end_channel(self, topic, event, payload):
        join_ref = self._channels.pop(topic)
        self._server._changed()
        self._send_json(join_ref, join_ref, topic, event, payload)

    def _channel_event(self, join_ref, ref, topic, event, payload):
        options = payload if isinstance(payload, dict) else {}
        if event == "noreply":
            pass
        elif event == "error":
            self._reply(join_ref, ref, topic, "error", payload)
        elif event == "slow":
            self._later(_number(options, "delay", 1.0), self._reply, join_ref, ref, topic, "ok", payload)
        elif event == "broadcast":
            self._server.broadcast(topic, options.get("event", "broadcast"), payload)
            self._reply(join_ref, ref, topic, "ok", {})
        elif event == "crash":
            self._end_channel(topic, "phx_error", {"reason": "channel_crash"})
        elif event == "stop":
            self._reply(join_ref, ref, topic, "ok", {})
            self._end_channel(topic, "phx_close", {})
        elif event == "push":
            data = payload if isinstance(payload, bytes) else options.get("payload", {})
            self._push(join_ref, topic, options.get("event", "push"), data)
            self._reply(join_ref, ref, topic, "ok", {})
        elif event == "garbage":
            self._reply(join_ref, ref, topic, "ok", {})
            self.send_garbage("text")
        elif event == "close":
            self._start_close(int(_number(options, "code", 1000)), str(options.get("reason", "")))
        elif event == "abort":
            self.abort()
        else:  # "echo" and anything else
            self._reply(join_ref, ref, topic, "ok", payload)

    def _later(self, delay, func, *args):
        def fire():
            self._timers.discard(timer)
            func(*args)
        timer = threading.Timer(delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()


def _number(options, key, default):
    value = options.get(key, default)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default


class PhoenixServer:
    """A Phoenix Channels server (V1 and V2 serializers) on 127.0.0.1, with fault switches."""

    def __init__(self, host="127.0.0.1", port=0, ssl_context=None, path="/socket",
                 idle_timeout=60.0, max_channels=100, connect_check=None, *,
                 rcvbuf=4096, send_timeout=5.0):
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.path = path.rstrip("/")
        self.idle_timeout = idle_timeout
        self.max_channels = max_channels
        self.connect_check = connect_check
        self.rcvbuf = rcvbuf
        self.send_timeout = send_timeout
        self.faults = Faults()
        self._cond = threading.Condition(threading.RLock())
        self._ids = itertools.count(1)
        self._accepted = []  # every Connection object, including those still in their handshake
        self._all = []  # every connection whose HTTP request was read, in accept order
        self._received = collections.deque(maxlen=100_000)
        self._stats = dict.fromkeys(STATS, 0)
        self._listener = None
        self._thread = None
        self._stopped = False

    @property
    def url(self):
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}{self.path}/websocket"

    def start(self):
        sock = _wire.listen_tcp(self.host, self.port, self.rcvbuf, POLL)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"testserver-accept-{self.port}")
        self._thread.start()
        return self

    def stop(self):
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            conns = list(self._accepted)
        if self._listener is not None:
            _wire.close_listener(self._listener)
        for conn in conns:
            conn.abort()
        deadline = time.monotonic() + 2.0
        for thread in [self._thread] + [c._thread for c in conns]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _accept_loop(self):
        while not self._stopped:
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopped:
                    return
                time.sleep(POLL)  # e.g. out of file descriptors
                continue
            sock.settimeout(self.send_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(self, sock, next(self._ids))
            with self._cond:
                if self._stopped:
                    sock.close()
                    return
                self._accepted.append(conn)
            conn._thread = threading.Thread(target=conn._run, daemon=True,
                                            name=f"testserver-conn-{conn.id}")
            conn._thread.start()

    # -- what tests look at ----------------------------------------------------------------

    @property
    def connections(self):
        with self._cond:
            return [c for c in self._all if not c.closed]

    @property
    def all_connections(self):
        with self._cond:
            return list(self._all)

    @property
    def received(self):
        with self._cond:
            return collections.deque(self._received, maxlen=self._received.maxlen)

    @property
    def stats(self):
        with self._cond:
            return dict(self._stats)

    def wait_for(self, predicate, timeout=5.0):
        with self._cond:
            return bool(self._cond.wait_for(predicate, timeout))

    def wait_connections(self, n, timeout=5.0):
        return self.wait_for(lambda: len(self._all) >= n, timeout)

    def broadcast(self, topic, event, payload):
        """[null, null, topic, event, payload] to every connection joined to topic (bytes: kind 2,
        V2 connections only)."""
        binary = isinstance(payload, (bytes, bytearray))
        for conn in self.connections:
            if topic in conn._channels and (conn.vsn2 or not binary):
                conn._broadcast(topic, event, payload)

    def reset_faults(self):
        self.faults._reset()
        for conn in self.all_connections:
            conn.faults._reset(inherit=True)

    # -- bookkeeping (any thread) ----------------------------------------------------------

    def _changed(self):
        with self._cond:
            self._cond.notify_all()

    def _count(self, name):
        with self._cond:
            self._stats[name] += 1
            self._cond.notify_all()

    def _record(self, conn_id, msg):
        with self._cond:
            self._received.append((conn_id, msg))
            self._cond.notify_all()

    def _register(self, conn):
        with self._cond:
            self._all.append(conn)
            self._stats["connections"] += 1
            self._cond.notify_all()
