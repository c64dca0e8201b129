"""Two raw TCP peers for faults the Phoenix test server cannot express: a WebSocket peer that
drains its receive buffer a few bytes at a time, and one that drips the upgrade response."""
import base64
import hashlib
import socket
import threading
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    for line in data.decode("latin-1").split("\r\n"):
        if line.lower().startswith("sec-websocket-key:"):
            return line.split(":", 1)[1].strip()
    return ""


def _accept_header(key):
    digest = hashlib.sha1((key + GUID).encode()).digest()
    return base64.b64encode(digest).decode()


class _Peer:
    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.stopped = threading.Event()
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self):
        return f"ws://127.0.0.1:{self.listener.getsockname()[1]}/socket"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.listener.close()
        for conn in self.conns:
            conn.close()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()


class SlowDrainPeer(_Peer):
    """Completes the upgrade, then reads ``chunk`` bytes every ``interval`` seconds forever."""

    def __init__(self, chunk=512, interval=0.05):
        super().__init__()
        self.chunk, self.interval = chunk, interval
        self.received = 0

    def _serve(self, conn):
        try:
            key = _read_request(conn)
            conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Accept: "
                          f"{_accept_header(key)}\r\n\r\n").encode())
            while not self.stopped.is_set():
                data = conn.recv(self.chunk)
                if not data:
                    return
                self.received += len(data)
                time.sleep(self.interval)
        except OSError:
            return


class DripUpgradePeer(_Peer):
    """Answers the upgrade one byte every ``interval`` seconds (each read alone is quick)."""

    def __init__(self, interval=0.2):
        super().__init__()
        self.interval = interval

    def _serve(self, conn):
        try:
            key = _read_request(conn)
            response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nX-Padding: " + "x" * 200 + "\r\n"
                        f"Sec-WebSocket-Accept: {_accept_header(key)}\r\n\r\n").encode()
            for i in range(len(response)):
                if self.stopped.is_set():
                    return
                conn.sendall(response[i:i + 1])
                time.sleep(self.interval)
        except OSError:
            return
