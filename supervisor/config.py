"""WorkerSpec and SupervisorConfig: plain dataclasses, validated before any process starts."""

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@/+=-][A-Za-z0-9_.:@/+=\- ]{0,63}$")
_MIN_MEMORY = 16 * 2**20


@dataclass
class WorkerSpec:
    """One slot to supervise.

    ``slot``: unique id (the pool uses the channel topic); shown in titles, logs and status, so it
    must never carry a secret. ``target(ctx, *args, **kwargs)`` runs in the forked worker; returning
    ends the worker with exit code 0. ``fingerprint``: reload compares slot + fingerprint, unchanged
    slots are left alone (put a hash of the slot's settings here).
    """

    slot: str
    target: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    fingerprint: str = ""


@dataclass
class SupervisorConfig:
    run_dir: str
    name: str = "pool"
    ack_interval: float = 1.0
    ack_deadline: float = 25.0
    boot_timeout: Optional[float] = None
    heartbeat_limit: Optional[float] = None
    liveness: str = "pipe"
    ack_dir: Optional[str] = None
    kill_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    memory_limit: Optional[int] = 256 * 2**20
    memory_limit_kind: str = "data"
    memory_soft_limit: Optional[int] = None
    max_age: Optional[float] = None
    min_uptime: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    max_restarts: int = 5
    restart_window: float = 60.0
    fatal_retry: float = 300.0
    title_prefix: str = "pool"
    control_socket: Optional[str] = None
    socket_group: Optional[str] = None
    allowed_uids: tuple = ()
    control_timeout: float = 5.0
    pidfile: Optional[str] = None

    @property
    def effective_boot_timeout(self):
        return self.ack_deadline if self.boot_timeout is None else self.boot_timeout

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def validate(self):
        """Raise ConfigError naming the key and the rule it breaks."""

        def num(key, minimum=None, above=None, allow_none=False):
            v = getattr(self, key)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{key} must be a finite number, got {v!r}")
            if minimum is not None and v < minimum:
                raise ConfigError(f"{key} must be >= {minimum}, got {v!r}")
            if above is not None and v <= above:
                raise ConfigError(f"{key} must be > {above}, got {v!r}")

        if not isinstance(self.run_dir, str) or not self.run_dir:
            raise ConfigError("run_dir is required (a directory for the pid file and sockets)")
        for key in ("name", "title_prefix"):
            v = getattr(self, key)
            if not isinstance(v, str) or not _NAME_RE.match(v):
                raise ConfigError(f"{key} must be 1-64 printable characters "
                                  f"(letters, digits, _.:@/+=- and spaces), got {v!r}")
        num("ack_interval", above=0)
        num("ack_deadline", above=0)
        if self.ack_deadline < 2 * self.ack_interval:
            raise ConfigError(f"ack_deadline ({self.ack_deadline}) must be at least twice ack_interval "
                              f"({self.ack_interval}): raise ack_deadline or lower ack_interval")
        num("boot_timeout", above=0, allow_none=True)
        num("heartbeat_limit", above=0, allow_none=True)
        if self.liveness not in ("pipe", "file"):
            raise ConfigError(f"liveness must be 'pipe' or 'file', got {self.liveness!r}")
        num("kill_timeout", minimum=0)
        num("shutdown_timeout", minimum=0)
        num("control_timeout", above=0)
        if self.memory_limit is not None:
            if not isinstance(self.memory_limit, int) or self.memory_limit < _MIN_MEMORY:
                raise ConfigError(f"memory_limit must be None or an int >= {_MIN_MEMORY} bytes, "
                                  f"got {self.memory_limit!r}")
        if self.memory_limit_kind not in ("data", "as"):
            raise ConfigError(f"memory_limit_kind must be 'data' (RLIMIT_DATA) or 'as' (RLIMIT_AS), "
                              f"got {self.memory_limit_kind!r}")
        if self.memory_soft_limit is not None:
            if not isinstance(self.memory_soft_limit, int) or self.memory_soft_limit <= 0:
                raise ConfigError(f"memory_soft_limit must be None or a positive int (bytes), "
                                  f"got {self.memory_soft_limit!r}")
            if self.memory_limit is not None and self.memory_soft_limit >= self.memory_limit:
                raise ConfigError("memory_soft_limit must be below memory_limit, or it never "
                                  "recycles before the hard limit kills")
        num("max_age", above=0, allow_none=True)
        num("min_uptime", minimum=0)
        num("backoff_initial", above=0)
        num("backoff_max", above=0)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("backoff_max must be >= backoff_initial")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) \
                or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        num("restart_window", above=0)
        num("fatal_retry", above=0)
        if not all(isinstance(u, int) and u >= 0 for u in self.allowed_uids):
            raise ConfigError(f"allowed_uids must be a tuple of uids (ints), got {self.allowed_uids!r}")
        return self


def validate_specs(specs):
    """Check a list of WorkerSpec: unique, printable slot ids, callable targets."""
    seen = set()
    for spec in specs:
        if not isinstance(spec, WorkerSpec):
            raise ConfigError(f"expected WorkerSpec, got {type(spec).__name__}")
        s = spec.slot
        if not isinstance(s, str) or not s or len(s) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in s):
            raise ConfigError(f"slot must be a non-empty printable string of at most 200 characters, "
                              f"got {s!r}")
        if s in seen:
            raise ConfigError(f"duplicate slot {s!r}")
        seen.add(s)
        if not callable(spec.target):
            raise ConfigError(f"slot {s!r}: target must be callable")
        if not isinstance(spec.args, tuple) or not isinstance(spec.kwargs, dict):
            raise ConfigError(f"slot {s!r}: args must be a tuple and kwargs a dict")
    return list(specs)
