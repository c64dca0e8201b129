"""The worker's own unix socket toward clients: non-blocking, bounded, never waited on.

`ClientServer` owns the listening socket and one `ClientConn` per connected client. The worker
puts their file descriptors in its single wait set and calls `on_readable` / `on_writable`;
requests reach the worker through ``handle(conn, header, body)``.

Bounds: a request frame over ``max_frame`` drops the client; each client's output buffer is
capped at ``out_limit`` bytes. Droppable output (inbound messages for a listener) is dropped
and counted when it would pass the cap, and the listener later sees a ``dropped`` marker;
a client whose non-droppable output (replies) passes twice the cap is disconnected.
"""
import errno
import logging
import os
import socket
import struct

from . import framing
from .errors import ProtocolError

log = logging.getLogger("pool.service")
_UCRED = struct.Struct("3i")


def peer_uid(sock):
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return uid


def listen_unix(path, mode=0o600, group=None, backlog=128):
    """A non-blocking listening unix socket at ``path`` with ``mode`` (replacing a stale file).

    The socket is bound under a temporary name and renamed into place once it listens, so a
    client never finds a file at ``path`` that refuses connections."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(tmp)
    finally:
        os.umask(old)
    if group is not None:
        import grp
        gid = group if isinstance(group, int) else grp.getgrnam(group).gr_gid
        os.chown(tmp, -1, gid)
    os.chmod(tmp, mode)
    sock.listen(backlog)
    sock.setblocking(False)
    os.rename(tmp, path)  # atomic: replaces a stale socket file too
    return sock


class ClientConn:
    __slots__ = ("sock", "reader", "out", "subscriptions", "dropped", "closed", "uid", "server")

    def __init__(self, server, sock, uid):
        self.server = server
        self.sock = sock
        self.uid = uid
        self.reader = framing.Reader(server.max_frame)
        self.out = bytearray()
        self.subscriptions = set()
        self.dropped = 0
        self.closed = False

    def fileno(self):
        return self.sock.fileno()

    def send(self, header, body=b"", droppable=False):
        """Queue one frame. Returns False if it was dropped (droppable and over the cap)."""
        if self.closed:
            return False
        frame = framing.encode(header, body)
        limit = self.server.out_limit
        if droppable:
            self._queue_marker()
            if len(self.out) + len(frame) > limit:
                self.dropped += 1
                self.server.stats["dropped_messages"] += 1
                return False
        elif len(self.out) + len(frame) > 2 * limit:
            self.server.drop(self, "client does not read its replies (output buffer full)")
            return False
        self.out += frame
        self.flush()
        return True

    def _queue_marker(self):
        """Tell a listener how many messages it missed, once there is room again."""
        if self.dropped and len(self.out) < self.server.out_limit // 2:
            self.out += framing.encode({"op": "dropped", "count": self.dropped})
            self.dropped = 0

    def flush(self):
        while not self.closed:
            self._queue_marker()
            if not self.out:
                return
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.server.drop(self, f"send failed: {exc}")
                return
            del self.out[:sent]


class ClientServer:
    def __init__(self, path, handle, *, mode=0o600, group=None, allowed_uids=(),
                 max_clients=1024, max_frame=framing.MAX_FRAME, out_limit=4 * 2**20,
                 on_disconnect=None):
        self.path = path
        self.handle = handle
        self.on_disconnect = on_disconnect
        self.allowed_uids = {os.getuid(), 0, *allowed_uids}
        self.max_clients = max_clients
        self.max_frame = max_frame
        self.out_limit = out_limit
        self.clients = {}
        self.stats = {"clients_accepted": 0, "clients_refused": 0, "clients_dropped": 0,
                      "bad_requests": 0, "dropped_messages": 0}
        self.listener = listen_unix(path, mode, group)

    def fileno(self):
        return self.listener.fileno()

    def read_fds(self):
        return [self.listener, *self.clients.values()]

    def write_fds(self):
        return [c for c in self.clients.values() if c.out or c.dropped]

    def accept(self):
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("accept failed reason=%s", exc)
                    return
                raise
            sock.setblocking(False)
            uid = peer_uid(sock)
            if uid not in self.allowed_uids or len(self.clients) >= self.max_clients:
                self.stats["clients_refused"] += 1
                reason = "uid not allowed" if uid not in self.allowed_uids else "too many clients"
                log.warning("client refused uid=%s reason=%s", uid, reason)
                try:
                    sock.send(framing.encode({"op": "error", "error": reason}))
                except OSError:
                    pass
                sock.close()
                continue
            self.clients[sock.fileno()] = ClientConn(self, sock, uid)
            self.stats["clients_accepted"] += 1

    def on_readable(self, conn):
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(conn, f"receive failed: {exc}")
            return
        if not data:
            self.drop(conn, None)
            return
        conn.reader.feed(data)
        try:
            for header, body in conn.reader.frames():
                self.handle(conn, header, body)
                if conn.closed:
                    return
        except ProtocolError as exc:
            self.stats["bad_requests"] += 1
            conn.send({"op": "error", "error": f"bad frame: {exc}"})
            conn.flush()
            self.drop(conn, f"bad frame: {exc}")

    def drop(self, conn, reason):
        if conn.closed:
            return
        conn.closed = True
        self.clients.pop(conn.sock.fileno(), None)
        if reason:
            self.stats["clients_dropped"] += 1
            log.info("client dropped uid=%s reason=%s", conn.uid, reason)
        try:
            conn.sock.close()
        except OSError:
            pass
        if self.on_disconnect is not None:
            self.on_disconnect(conn)

    def close(self):
        for conn in list(self.clients.values()):
            self.drop(conn, None)
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
