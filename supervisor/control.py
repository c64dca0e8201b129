"""The control socket: a unix stream socket served from the supervisor's main loop.

Frames: a 4-byte big-endian length, then that many bytes of UTF-8 JSON (an object). Requests:

    {"cmd": "status"}
    {"cmd": "stop"}                         graceful stop of the whole supervisor
    {"cmd": "restart", "slot": S | "all"}   graceful restart (not counted as a crash)
    {"cmd": "dump", "slot": S}              send the faulthandler dump signal (stack to the log)
    {"cmd": "reload"}                       call the reload callable, diff the slots

Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Hardening: mode 0600 (0660 with ``socket_group``), the peer's uid checked with SO_PEERCRED (our
uid, root, ``allowed_uids``), frames above MAX_FRAME refused, a bounded number of clients, every
socket non-blocking, and a per-client deadline: a client that sends half a frame and stalls, or
does not read its reply, is dropped -- the loop never waits for a client.
"""

import errno
import grp
import json
import logging
import os
import socket
import struct
import time

from .errors import ConfigError, ControlProtocolError, ControlTimeout, ControlUnavailable

log = logging.getLogger("supervisor")

MAX_FRAME = 1 << 20
MAX_CLIENTS = 64
_LEN = struct.Struct(">I")
_UNIX_PATH_MAX = 107


def encode_frame(obj):
    data = json.dumps(obj, separators=(",", ":"), default=str).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(data)) + data


class FrameError(Exception):
    pass


class FrameDecoder:
    """Incremental decoder with a hard size bound. ``feed(bytes)`` -> list of decoded objects;
    raises FrameError on an oversized, empty, non-UTF-8 or non-JSON frame."""

    def __init__(self, max_frame=MAX_FRAME):
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data
        out = []
        while True:
            if len(self.buf) < 4:
                return out
            (n,) = _LEN.unpack_from(self.buf)
            if n == 0 or n > self.max_frame:
                raise FrameError(f"frame length {n} outside 1..{self.max_frame}")
            if len(self.buf) < 4 + n:
                return out
            body = bytes(self.buf[4:4 + n])
            del self.buf[:4 + n]
            try:
                out.append(json.loads(body.decode("utf-8")))
            except (UnicodeDecodeError, ValueError) as e:
                raise FrameError(f"unparseable frame: {e.__class__.__name__}") from None

    @property
    def pending(self):
        return len(self.buf)


def peer_uid(sock):
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", data)
    return uid


class _Client:
    __slots__ = ("sock", "decoder", "out", "deadline", "closing", "uid")

    def __init__(self, sock, deadline, uid):
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.deadline = deadline
        self.closing = False
        self.uid = uid

    def fileno(self):
        return self.sock.fileno()


class ControlServer:
    """Non-blocking control server. The supervisor puts ``wait_objects()`` in its wait set and
    calls ``serve(ready, handler)`` every pass; ``handler(request_dict) -> reply_dict``."""

    def __init__(self, path, *, group=None, allowed_uids=(), client_timeout=5.0, clock=time.monotonic):
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"control_socket path is too long for a unix socket "
                              f"({len(path)} > {_UNIX_PATH_MAX} bytes): use a shorter run_dir")
        self.path = path
        self.group = group
        self.allowed = {os.getuid(), 0, *allowed_uids}
        self.client_timeout = client_timeout
        self.clock = clock
        self.sock = None
        self.clients = {}
        self.served = 0
        self.rejected = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self):
        gid = None
        if self.group is not None:
            try:
                gid = int(self.group) if str(self.group).isdigit() else grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ConfigError(f"socket_group {self.group!r} does not exist") from None
        try:
            os.unlink(self.path)      # we hold the run_dir's pid lock: any socket here is stale
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(self.path, -1, gid)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        self.sock = sock
        return self

    def close(self):
        for c in list(self.clients.values()):
            self._drop(c)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def sockets(self):
        """Every socket object the server owns (a forked worker detaches and closes them)."""
        socks = [c.sock for c in self.clients.values()]
        if self.sock is not None:
            socks.append(self.sock)
        return socks

    # -- loop integration --------------------------------------------------------------------------
    def wait_objects(self):
        objs = [self.sock] if self.sock is not None else []
        objs.extend(c.sock for c in self.clients.values() if not c.closing)
        return objs

    def has_pending_output(self):
        return any(c.out for c in self.clients.values())

    def next_deadline(self):
        return min((c.deadline for c in self.clients.values()), default=None)

    def serve(self, ready, handler):
        now = self.clock()
        if self.sock is not None and self.sock in ready:
            self._accept(now)
        for c in list(self.clients.values()):
            if c.sock in ready and not c.closing:
                self._read(c, handler, now)
            if c.out and c.sock.fileno() >= 0:
                self._flush(c)
            if c.sock.fileno() < 0:
                continue
            if c.closing and not c.out:
                self._drop(c)
            elif now >= c.deadline:
                log.warning("event=control_client_dropped reason=deadline uid=%s", c.uid)
                self._drop(c)

    # -- internals --------------------------------------------------------------------------------
    def _accept(self, now):
        for _ in range(16):
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("event=control_accept_failed error=%r", str(e))
                    return
                raise
            sock.setblocking(False)
            try:
                uid = peer_uid(sock)
            except OSError:
                uid = None
            if uid not in self.allowed:
                self.rejected += 1
                log.warning("event=control_refused uid=%s reason=%s", uid, "uid not allowed")
                self._try_send_now(sock, {"ok": False, "error": "permission denied"})
                sock.close()
                continue
            if len(self.clients) >= MAX_CLIENTS:
                self.rejected += 1
                log.warning("event=control_refused uid=%s reason=%s", uid, "too many clients")
                self._try_send_now(sock, {"ok": False, "error": "too many clients"})
                sock.close()
                continue
            self.clients[sock.fileno()] = _Client(sock, now + self.client_timeout, uid)

    @staticmethod
    def _try_send_now(sock, obj):
        try:
            sock.send(encode_frame(obj))
        except OSError:
            pass

    def _read(self, c, handler, now):
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            c.closing = True
            c.out.clear()
            return
        try:
            requests = c.decoder.feed(data)
        except FrameError as e:
            log.warning("event=control_bad_frame uid=%s error=%r", c.uid, str(e))
            self._queue(c, {"ok": False, "error": f"bad frame: {e}"})
            c.closing = True
            return
        for req in requests:
            self.served += 1
            try:
                if not isinstance(req, dict):
                    reply = {"ok": False, "error": "request must be a JSON object"}
                else:
                    reply = handler(req)
            except Exception as e:  # a handler bug must not take the loop down
                log.exception("event=control_handler_error")
                reply = {"ok": False, "error": f"internal error: {type(e).__name__}"}
            self._queue(c, reply)
        c.deadline = now + self.client_timeout

    def _queue(self, c, reply):
        try:
            frame = encode_frame(reply)
        except (ValueError, TypeError) as e:
            frame = encode_frame({"ok": False, "error": f"reply not encodable: {e}"})
        if len(c.out) + len(frame) > 4 * MAX_FRAME:
            log.warning("event=control_client_dropped reason=output_full uid=%s", c.uid)
            c.out.clear()
            c.closing = True
            return
        c.out += frame

    def _flush(self, c):
        while c.out:
            try:
                n = c.sock.send(c.out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                c.out.clear()
                c.closing = True
                return
            del c.out[:n]

    def _drop(self, c):
        self.clients.pop(c.sock.fileno(), None)
        try:
            c.sock.close()
        except OSError:
            pass

    def flush_all(self, budget=0.5):
        """Best effort at exit: push pending replies (e.g. to ``stop``) for up to ``budget`` s."""
        end = self.clock() + budget
        while self.has_pending_output() and self.clock() < end:
            for c in list(self.clients.values()):
                self._flush(c)
            if self.has_pending_output():
                time.sleep(0.01)


def request(socket_path, obj, timeout=5.0):
    """Send one request to a supervisor's control socket and return its reply (a dict; check
    ``reply["ok"]``). Every step is bounded by ``timeout`` (seconds, in total).

    Raises ControlUnavailable (no socket, refused, permission denied), ControlTimeout, or
    ControlProtocolError -- all subclasses of supervisor.errors.ControlError.
    """
    deadline = time.monotonic() + timeout

    def remaining():
        left = deadline - time.monotonic()
        if left <= 0:
            raise ControlTimeout(f"no reply from {socket_path} within {timeout} s")
        return left

    try:
        frame = encode_frame(obj)
    except (TypeError, ValueError) as e:
        raise ControlProtocolError(f"request not encodable: {e}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        try:
            sock.settimeout(remaining())
            sock.connect(socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ControlUnavailable(f"no supervisor listening on {socket_path} ({e.strerror})") from None
        except PermissionError as e:
            raise ControlUnavailable(f"permission denied on {socket_path} ({e.strerror})") from None
        except socket.timeout:
            raise ControlTimeout(f"connecting to {socket_path} timed out after {timeout} s") from None
        except OSError as e:
            raise ControlUnavailable(f"cannot connect to {socket_path}: {e}") from None
        try:
            view = memoryview(frame)
            while view:
                sock.settimeout(remaining())
                n = sock.send(view)
                view = view[n:]
            decoder = FrameDecoder()
            while True:
                sock.settimeout(remaining())
                data = sock.recv(65536)
                if not data:
                    raise ControlProtocolError(f"{socket_path} closed the connection without a reply")
                try:
                    replies = decoder.feed(data)
                except FrameError as e:
                    raise ControlProtocolError(str(e)) from None
                if replies:
                    reply = replies[0]
                    if not isinstance(reply, dict):
                        raise ControlProtocolError("reply is not a JSON object")
                    return reply
        except socket.timeout:
            raise ControlTimeout(f"no reply from {socket_path} within {timeout} s") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise ControlProtocolError(f"{socket_path}: connection lost ({e.strerror})") from None
    finally:
        sock.close()
