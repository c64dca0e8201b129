"""phoenix-pool: a supervised process pool of Phoenix Channels connections.

`Socket` is a standalone blocking client whose every operation is bounded; the pool runs one
per worker process under a watchdog (see docs/).
"""
from .connection import Socket
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
    Timeout,
)
from .protocol import Message

__all__ = [
    "Socket", "Message", "PoolError", "ProtocolError", "ConnectionLost", "ConnectFailed",
    "Timeout", "ConnectTimeout", "JoinTimeout", "PushTimeout", "SendTimeout", "ReplyError",
    "NotJoined",
]
