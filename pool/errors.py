"""Exceptions raised by pool. All derive from PoolError; timeouts also derive from TimeoutError."""


class PoolError(Exception):
    """Base class of every error this library raises on purpose."""


class ProtocolError(PoolError):
    """A frame that does not follow the Phoenix wire format (from the server or a client)."""


class ConnectionLost(PoolError):
    """The connection is gone (closed by the peer, reset, heartbeat missed, malformed frame).

    The socket has already been discarded; connect again to go on.
    """


class ConnectFailed(PoolError):
    """The TCP connect, TLS handshake or WebSocket upgrade failed.

    ``status`` holds the HTTP status of a rejected upgrade (403 when the server's
    ``connect/3`` refused the params or the protocol version), else None.
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class Timeout(PoolError, TimeoutError):
    """A bounded operation ran out of time."""


class ConnectTimeout(Timeout, ConnectFailed):
    """TCP connect + TLS + HTTP upgrade did not finish within ``connect_timeout``."""


class JoinTimeout(Timeout):
    """No reply to ``phx_join`` within the join timeout."""


class PushTimeout(Timeout):
    """No reply to a push within its timeout (it may or may not have reached the server)."""


class SendTimeout(Timeout, ConnectionLost):
    """One frame could not be written within ``send_timeout``; the connection was discarded."""


class ReplyError(PoolError):
    """The server replied with status "error"; ``response`` holds the reply's response."""

    def __init__(self, response, topic=None, event=None):
        super().__init__(f"server replied error to {event!r} on {topic!r}: {response!r}")
        self.response = response
        self.topic = topic
        self.event = event


class NotJoined(PoolError):
    """A push or leave for a topic this socket has not joined."""


class Rejected(PoolError):
    """The pool refused the push: unknown topic, channel closed or FATAL, buffer full, too many
    pushes awaiting a reply, worker stopping."""


class WorkerLost(PoolError):
    """The worker died with the request in flight (seen at once, through EOF on its socket).

    The push may or may not have reached the server; retry only if that is safe.
    """


class NotRunning(PoolError):
    """No pool (or no worker for the topic) is listening in the run_dir."""


class ConfigError(PoolError, ValueError):
    """The pool configuration is invalid; the message names the file, the key and the fix."""
