"""phoenix-pool: a supervised process pool of Phoenix Channels connections.

- `Pool`: start a supervised pool as a child of this script and use it (a context manager).
- `Client`: talk to a running pool (`pool start`) through its run_dir or config file.
- `Socket`: a standalone blocking Phoenix client whose every operation is bounded.
"""
from .client import Client
from .connection import Socket
from .embedded import Pool
from .errors import (
    ConfigError,
    ConnectFailed,
    ConnectionLost,
    ConnectTimeout,
    JoinTimeout,
    NotJoined,
    NotRunning,
    PoolError,
    ProtocolError,
    PushTimeout,
    Rejected,
    ReplyError,
    SendTimeout,
    Timeout,
    WorkerLost,
)
from .protocol import Message

__all__ = [
    "Pool", "Client", "Socket", "Message", "PoolError", "ConfigError", "ProtocolError",
    "ConnectionLost", "ConnectFailed", "Timeout", "ConnectTimeout", "JoinTimeout", "PushTimeout",
    "SendTimeout", "ReplyError", "NotJoined", "Rejected", "WorkerLost", "NotRunning",
]
