"""A blocking connection to one worker's unix socket. Every call is bounded by its timeout.

`pool.Client` routes each topic to one of these; tests and tools may use it directly.
It is safe across fork: a child process notices the pid change and opens its own connection.
"""
import itertools
import json
import os
import socket
import time

from . import framing, protocol
from .errors import NotRunning, PushTimeout, Rejected, ReplyError, WorkerLost, PoolError, Timeout
from .protocol import Message

GRACE = 1.0  # the worker answers "timeout" itself; wait this much longer before deciding locally
MAX_STASHED = 10_000  # listener messages kept while a request waits for its reply


class WorkerConnection:
    def __init__(self, path, connect_timeout=5.0):
        self.path = path
        self.connect_timeout = connect_timeout
        self._sock = None
        self._reader = None
        self._pid = None
        self._ids = itertools.count(1)
        self._pending_messages = []
        self._stash_dropped = 0

    def _connected(self):
        if self._sock is not None and self._pid == os.getpid():
            return self._sock
        self._sock = None  # after fork the parent's socket is not ours to use
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            raise NotRunning(f"no worker listening at {self.path} ({exc.strerror})") from None
        except socket.timeout:
            sock.close()
            raise Timeout(f"connecting to {self.path} timed out") from None
        self._sock, self._reader, self._pid = sock, framing.Reader(), os.getpid()
        return sock

    def close(self):
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close()
        self._sock = None

    def _send(self, header, body=b""):
        sock = self._connected()
        try:
            sock.settimeout(self.connect_timeout)
            sock.sendall(framing.encode(header, body))
        except OSError as exc:
            self.close()
            raise WorkerLost(f"worker at {self.path} went away: {exc}") from None

    def _recv(self, deadline):
        try:
            item = framing.recv_frame(self._sock, self._reader, deadline)
        except socket.timeout:
            return None
        except (OSError, PoolError) as exc:
            self.close()
            raise WorkerLost(f"worker at {self.path} went away: {exc}") from None
        if item is None:
            self.close()
            raise WorkerLost(f"worker at {self.path} closed the connection (it died or stopped)")
        return item

    def request(self, header, body=b"", timeout=5.0, reply_op=None):
        """Send a request and return the (header, body) answering it (same id)."""
        rid = next(self._ids)
        header = dict(header, id=rid)
        self._send(header, body)
        deadline = time.monotonic() + timeout
        while True:
            item = self._recv(deadline)
            if item is None:
                return None
            head, rbody = item
            if head.get("op") in ("message", "dropped"):
                if len(self._pending_messages) < MAX_STASHED:
                    self._pending_messages.append(item)
                else:
                    self._stash_dropped += 1
                continue
            if head.get("id") == rid or head.get("op") == "error" and head.get("id") is None:
                if head.get("op") == "error":
                    raise Rejected(head.get("error", "request refused"))
                return head, rbody

    def push(self, topic, event, payload=None, timeout=10.0, payload_json=None):
        """Push and wait for the outcome; returns the reply's response (see module pool.errors
        for the exceptions: ReplyError, PushTimeout, Rejected, WorkerLost)."""
        body = payload_json if payload_json is not None else protocol.dumps(
            {} if payload is None else payload)
        got = self.request({"op": "push", "topic": topic, "event": event, "timeout": timeout},
                           body, timeout + GRACE)
        if got is None:
            raise PushTimeout(f"no outcome for {event!r} on {topic!r} within {timeout:g}s")
        head, rbody = got
        response = json.loads(rbody) if rbody else None
        outcome = head.get("outcome")
        if outcome == "ok":
            return response
        if outcome == "error":
            raise ReplyError(response, topic, event)
        if outcome == "timeout":
            raise PushTimeout(f"{event!r} on {topic!r}: {head.get('reason', 'timed out')}")
        raise Rejected(f"{event!r} on {topic!r}: {head.get('reason', 'rejected')}")

    def info(self, timeout=5.0):
        got = self.request({"op": "info"}, timeout=timeout)
        if got is None:
            raise Timeout(f"no answer from {self.path} within {timeout:g}s")
        return json.loads(got[1])

    def subscribe(self, topic, timeout=5.0):
        got = self.request({"op": "listen", "topic": topic}, timeout=timeout)
        if got is None:
            raise Timeout(f"no answer from {self.path} within {timeout:g}s")

    def next_message(self, timeout):
        """The next inbound message for a subscribed topic, or None after ``timeout``.

        A ``Message`` with event "pool:dropped" and payload {"count": N} marks N messages the
        worker dropped because this listener did not keep up."""
        if self._stash_dropped:
            count, self._stash_dropped = self._stash_dropped, 0
            return Message("", "pool:dropped", {"count": count})
        if self._pending_messages:
            head, body = self._pending_messages.pop(0)
        else:
            item = self._recv(time.monotonic() + timeout)
            if item is None:
                return None
            head, body = item
        if head.get("op") == "dropped":
            return Message("", "pool:dropped", {"count": head.get("count", 0)})
        if head.get("op") != "message":
            return self.next_message(timeout)
        return Message(head["topic"], head["event"], json.loads(body) if body else None,
                       head.get("ref"), head.get("join_ref"))
