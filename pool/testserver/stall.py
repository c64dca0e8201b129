"""StallListener: the seed report's reproduction, a peer that stops reading after the join.

It completes the WebSocket upgrade (V2), answers heartbeats and phx_join with ok replies until
it has answered `joins` joins, then never reads again and never closes the socket until stop().
The receive buffer is tiny, so a client that keeps sending fills its own send buffer and its
send() blocks: without a send timeout it blocks forever.
"""
import socket
import struct
import threading
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from . import _wire

POLL = 0.1
HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 5.0


class StallListener:
    def __init__(self, host="127.0.0.1", port=0, joins=1, path="/socket", *, rcvbuf=4096):
        self.host = host
        self.port = port
        self.joins = joins
        self.path = path.rstrip("/")
        self.rcvbuf = rcvbuf
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._socks = []
        self._threads = []
        self._count = 0
        self._listener = None

    @property
    def url(self):
        return f"ws://{self.host}:{self.port}{self.path}/websocket"

    @property
    def connections(self):
        """How many connections were accepted."""
        return self._count

    def wait_connections(self, n, timeout=5.0):
        with self._cond:
            return self._cond.wait_for(lambda: self._count >= n, timeout)

    def start(self):
        sock = _wire.listen_tcp(self.host, self.port, self.rcvbuf, POLL)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._spawn(self._accept_loop, f"stall-accept-{self.port}")
        return self

    def stop(self):
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            _wire.close_listener(self._listener)
        with self._cond:
            socks = list(self._socks)
        for sock in socks:
            _abort(sock)
        deadline = time.monotonic() + 2.0
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _spawn(self, target, name, *args):
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(POLL)
                continue
            sock.settimeout(SEND_TIMEOUT)
            with self._cond:
                if self._stopping.is_set():
                    _abort(sock)
                    return
                self._socks.append(sock)
                self._count += 1
                self._cond.notify_all()
            self._spawn(self._serve, f"stall-conn-{self._count}", sock)

    def _serve(self, sock):
        try:
            self._answer_until_joined(sock)
        except (OSError, ValueError, StopIteration, LocalProtocolError, RemoteProtocolError):
            _abort(sock)
            return
        self._stopping.wait()  # the stall: never read again, keep the socket open

    def _answer_until_joined(self, sock):
        got = _wire.read_head(sock, time.monotonic() + HANDSHAKE_TIMEOUT, self._stopping.is_set)
        if got is None:
            return
        head, data = got
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        request = next(e for e in ws.events() if isinstance(e, Request))
        subprotocol = "phoenix" if "phoenix" in request.subprotocols else None
        sock.sendall(ws.send(AcceptConnection(subprotocol=subprotocol)))
        answered = 0
        while answered < self.joins and not self._stopping.is_set():
            if data:
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Ping):
                        sock.sendall(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        return
                    elif isinstance(event, TextMessage) and event.message_finished:
                        answered += self._answer(sock, ws, event.data)
                        if answered >= self.joins:
                            return  # whatever else arrived stays unprocessed
            data = b""
            if _wire.wait_readable(sock, POLL):
                data = sock.recv(65536)
                if not data:
                    return

    @staticmethod
    def _answer(sock, ws, text):
        """Reply ok to a heartbeat or a join; returns 1 for a join."""
        try:
            msg = _wire.decode_text(text, vsn2=True)
        except _wire.Malformed:
            return 0
        if msg["event"] not in ("heartbeat", "phx_join"):
            return 0
        join_ref = (msg["join_ref"] or msg["ref"]) if msg["event"] == "phx_join" else None
        reply = _wire.encode_json(True, join_ref, msg["ref"], msg["topic"], "phx_reply",
                                  {"status": "ok", "response": {}})
        sock.sendall(ws.send(TextMessage(data=reply)))
        return 1 if msg["event"] == "phx_join" else 0


def _abort(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RD)  # wakes a select() that would delay the reset
    except OSError:
        pass
    sock.close()
