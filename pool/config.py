"""The pool's configuration: a TOML file, a dict of the same shape, or keyword arguments.

    from pool.config import load_config
    cfg = load_config("pool.toml")                        # or data={"pool": {...}, "channels": [...]}
    cfg = load_config(url="ws://localhost:4000/socket", topics=["room:lobby"])
    sup_cfg = cfg.supervisor_config()                     # a validated supervisor.SupervisorConfig
    specs = cfg.worker_specs()                            # one supervisor.WorkerSpec per channel

Everything is validated here, before any process starts. Each error names the file (when loaded
from one), the key path (``[pool] ack_deadline``, ``[[channels]] #2 topic``), what is wrong and
the fix. An error message never contains the value of ``params``, ``auth_token``, ``headers``
or a channel ``payload`` (they carry secrets), nor a url's query string.

``${VAR}`` in any string value is replaced from ``os.environ``; ``$${`` is a literal ``${``.
The reference for every key and the reasons behind the timing rules: docs/configuration.md.
"""
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import supervisor
from supervisor.config import validate_specs

from . import protocol
from .errors import ConfigError
from .worker import ChannelSpec, WorkerSettings, run_worker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

__all__ = ["load_config", "PoolConfig", "ChannelConfig", "channel_socket_path", "parse_size",
           "ConfigError", "SERVER_IDLE_TIMEOUT", "UNIX_PATH_MAX"]

SERVER_IDLE_TIMEOUT = 60.0   # Phoenix closes a socket that sent nothing for this long
UNIX_PATH_MAX = 107          # sun_path is 108 bytes on Linux, one of them the terminating NUL
MIN_MEMORY_LIMIT = 16 * 2**20
_REQUIRED = object()

MiB = 2**20

# [pool] keys: name -> (kind, default). Defaults of None for heartbeat_timeout, join_timeout,
# ack_deadline and run_dir mean "derived" (see load_config).
POOL_KEYS = {
    "name": ("name", "pool"),
    "url": ("url", _REQUIRED),
    "params": ("params", None),
    "vsn": ("vsn", protocol.V2),
    "run_dir": ("path", None),
    "heartbeat_interval": ("heartbeat", 25.0),
    "heartbeat_timeout": ("seconds", None),
    "send_timeout": ("seconds", 10.0),
    "connect_timeout": ("seconds", 10.0),
    "push_timeout": ("seconds", 10.0),
    "join_timeout": ("seconds", None),
    "ack_interval": ("seconds", 1.0),
    "ack_deadline": ("seconds", None),
    "liveness": ("liveness", "pipe"),
    "memory_limit": ("size", 256 * MiB),
    "memory_limit_kind": ("memory_limit_kind", "data"),
    "memory_soft_limit": ("size", None),
    "max_age": ("optional_seconds", None),
    "max_restarts": ("count", 5),
    "restart_window": ("seconds", 60.0),
    "fatal_retry": ("seconds", 300.0),
    "min_uptime": ("seconds_or_zero", 10.0),
    "kill_timeout": ("seconds", 5.0),
    "shutdown_timeout": ("seconds", 10.0),
    "backoff_initial": ("seconds", 0.5),
    "backoff_max": ("seconds", 60.0),
    "push_buffer": ("count", 1000),
    "max_inflight": ("count", 10000),
    "log_level": ("log_level", "info"),
    "log_file": ("path", None),
    "headers": ("headers", ()),
    "auth_token": ("secret", None),
    "ca_certs": ("file", None),
    "tls_verify": ("bool", True),
    "socket_group": ("group", None),
    "allowed_uids": ("uids", ()),
}

# secrets tied to the pool's url: not inherited by a channel that talks to another origin
HOST_SECRETS = ("params", "headers", "auth_token")


def _origin(url):
    """(scheme, host, port) of a ws:// or wss:// URL, with the default port filled in."""
    parts = urlsplit(url)
    return (parts.scheme, (parts.hostname or "").lower(),
            parts.port or (443 if parts.scheme == "wss" else 80))


# Keys a [[channels]] entry may override; everything else in [pool] is pool-wide.
CHANNEL_OVERRIDES = ("url", "params", "vsn", "heartbeat_interval", "heartbeat_timeout",
                     "send_timeout", "connect_timeout", "push_timeout", "join_timeout",
                     "push_buffer", "max_inflight", "headers", "auth_token")
CHANNEL_KEYS = ("topic", "payload", "handler") + CHANNEL_OVERRIDES

SECRET_KEYS = frozenset({"params", "auth_token", "headers", "payload"})
CHOICES = {
    "vsn": (protocol.V2, protocol.V1),
    "liveness": ("pipe", "file"),
    "memory_limit_kind": ("data", "as"),
    "log_level": ("debug", "info", "warning", "error"),
}
CHOICE_HELP = {
    "vsn": "the Phoenix serializer version: '2.0.0' (V2, arrays; the default) or '1.0.0' (V1)",
    "liveness": "'pipe' (the default: a byte on a pipe per ack) or 'file' (an ack file on tmpfs)",
    "memory_limit_kind": "'data' (RLIMIT_DATA, the default) or 'as' (RLIMIT_AS)",
    "log_level": "one of debug, info, warning, error",
}

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=-]{0,63}$")
_HANDLER_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
    "t": 2**40, "tib": 2**40,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
}


# -- public data classes -----------------------------------------------------------------------

@dataclass
class ChannelConfig:
    """One ``[[channels]]`` entry with its effective settings (the pool's, then its overrides)."""

    topic: str
    url: str
    payload: Any = field(default_factory=dict, repr=False)
    handler: Union[str, Callable, None] = None
    params: Optional[dict] = field(default=None, repr=False)
    vsn: str = protocol.V2
    heartbeat_interval: float = 25.0
    heartbeat_timeout: float = 25.0
    send_timeout: float = 10.0
    connect_timeout: float = 10.0
    push_timeout: float = 10.0
    join_timeout: float = 10.0
    push_buffer: int = 1000
    max_inflight: int = 10000
    headers: Tuple[str, ...] = field(default=(), repr=False)
    auth_token: Optional[str] = field(default=None, repr=False)
    index: int = 0  # 1-based position in [[channels]] (0: added by the topics= shortcut)

    @property
    def loop_pass(self):
        """The longest a healthy worker loop pass can block: a connect, then one send."""
        return self.connect_timeout + self.send_timeout


@dataclass
class PoolConfig:
    """A validated pool configuration. Build it with :func:`load_config`."""

    url: str
    run_dir: str
    channels: List[ChannelConfig]
    name: str = "pool"
    params: Optional[dict] = field(default=None, repr=False)
    vsn: str = protocol.V2
    heartbeat_interval: float = 25.0
    heartbeat_timeout: Optional[float] = None
    send_timeout: float = 10.0
    connect_timeout: float = 10.0
    push_timeout: float = 10.0
    join_timeout: Optional[float] = None
    ack_interval: float = 1.0
    ack_deadline: float = 0.0
    liveness: str = "pipe"
    memory_limit: Optional[int] = 256 * MiB
    memory_limit_kind: str = "data"
    memory_soft_limit: Optional[int] = None
    max_age: Optional[float] = None
    max_restarts: int = 5
    restart_window: float = 60.0
    fatal_retry: float = 300.0
    min_uptime: float = 10.0
    kill_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 60.0
    push_buffer: int = 1000
    max_inflight: int = 10000
    log_level: str = "info"
    log_file: Optional[str] = None
    headers: Tuple[str, ...] = field(default=(), repr=False)
    auth_token: Optional[str] = field(default=None, repr=False)
    ca_certs: Optional[str] = None
    tls_verify: bool = True
    socket_group: Union[str, int, None] = None
    allowed_uids: Tuple[int, ...] = ()
    source: Optional[str] = None
    explicit: frozenset = field(default=frozenset(), repr=False)  # [pool] keys set, not defaulted

    # -- derived values ----------------------------------------------------------------

    @property
    def control_socket(self):
        return os.path.join(self.run_dir, "supervisor.sock")

    @property
    def heartbeat_limit(self):
        """A joined worker whose last server heartbeat reply is older than this is wedged."""
        return max(c.heartbeat_interval + c.heartbeat_timeout + c.send_timeout
                   + 2 * self.ack_interval for c in self.channels)

    @property
    def min_ack_deadline(self):
        """ack_deadline must be above this: the longest healthy loop pass plus one ack interval."""
        return max(c.loop_pass for c in self.channels) + self.ack_interval

    @property
    def sslopt(self):
        """websocket-client ``sslopt`` for wss channels (None when nothing is set)."""
        opt = {}
        if self.ca_certs:
            opt["ca_certs"] = self.ca_certs
        if not self.tls_verify:
            opt["cert_reqs"] = ssl.CERT_NONE
            opt["check_hostname"] = False
        return opt or None

    @property
    def topics(self):
        return [c.topic for c in self.channels]

    def channel(self, topic):
        for c in self.channels:
            if c.topic == topic:
                return c
        raise KeyError(topic)

    # -- what the supervisor and the workers get ------------------------------------------

    def supervisor_config(self):
        """A validated :class:`supervisor.SupervisorConfig` for this pool."""
        sup = supervisor.SupervisorConfig(
            run_dir=self.run_dir, name=self.name, ack_interval=self.ack_interval,
            ack_deadline=self.ack_deadline, heartbeat_limit=self.heartbeat_limit,
            liveness=self.liveness, kill_timeout=self.kill_timeout,
            shutdown_timeout=self.shutdown_timeout, memory_limit=self.memory_limit,
            memory_limit_kind=self.memory_limit_kind, memory_soft_limit=self.memory_soft_limit,
            max_age=self.max_age, min_uptime=self.min_uptime,
            backoff_initial=self.backoff_initial, backoff_max=self.backoff_max,
            max_restarts=self.max_restarts, restart_window=self.restart_window,
            fatal_retry=self.fatal_retry, control_socket=self.control_socket,
            socket_group=None if self.socket_group is None else str(self.socket_group),
            allowed_uids=tuple(self.allowed_uids))
        try:
            return sup.validate()
        except supervisor.ConfigError as exc:
            raise ConfigError(f"{_prefix(self.source)}[pool]: {exc}") from None

    def worker_settings(self, channel):
        """The :class:`pool.worker.WorkerSettings` of one channel (a ChannelConfig or a topic)."""
        c = channel if isinstance(channel, ChannelConfig) else self.channel(channel)
        return WorkerSettings(
            url=c.url, params=dict(c.params) if c.params is not None else None, vsn=c.vsn,
            heartbeat_interval=c.heartbeat_interval, heartbeat_timeout=c.heartbeat_timeout,
            send_timeout=c.send_timeout, connect_timeout=c.connect_timeout,
            push_timeout=c.push_timeout, join_timeout=c.join_timeout, push_buffer=c.push_buffer,
            max_inflight=c.max_inflight,
            headers=tuple(c.headers),
            sslopt=self.sslopt if urlsplit(c.url).scheme == "wss" else None,
            auth_token=c.auth_token,
            socket_path=channel_socket_path(self.run_dir, c.topic, source=self.source),
            socket_mode=0o660 if self.socket_group is not None else 0o600,
            socket_group=self.socket_group, allowed_uids=tuple(self.allowed_uids))

    def channel_spec(self, channel):
        c = channel if isinstance(channel, ChannelConfig) else self.channel(channel)
        return ChannelSpec(topic=c.topic, payload=c.payload, handler=c.handler)

    def fingerprint(self, channel):
        """A stable hash of a channel's effective settings: reload restarts a channel only when
        this changes. A sha256 prefix, so it carries no readable secret."""
        c = channel if isinstance(channel, ChannelConfig) else self.channel(channel)
        settings = dataclasses.asdict(self.worker_settings(c))
        spec = {"topic": c.topic, "payload": c.payload, "handler": _handler_id(c.handler)}
        blob = json.dumps({"settings": settings, "channel": spec}, sort_keys=True,
                          separators=(",", ":"), default=_fingerprint_default)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def worker_specs(self):
        """One :class:`supervisor.WorkerSpec` per channel, slot = topic, target = run_worker."""
        return [supervisor.WorkerSpec(slot=c.topic, target=run_worker,
                                      args=(self.worker_settings(c), [self.channel_spec(c)]),
                                      fingerprint=self.fingerprint(c))
                for c in self.channels]

    def redacted(self):
        """A plain dict of the effective settings with every secret replaced by "***"
        (for ``pool check-config`` and logs)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("channels", "explicit"):
                continue
            out[f.name] = _redact(f.name, getattr(self, f.name))
        out["url"] = _safe_url(self.url)
        out["heartbeat_limit"] = self.heartbeat_limit
        out["control_socket"] = self.control_socket
        chans = []
        for c in self.channels:
            d = {f.name: _redact(f.name, getattr(c, f.name)) for f in dataclasses.fields(c)}
            d["url"] = _safe_url(c.url)
            d["handler"] = _handler_id(c.handler)
            d["socket_path"] = channel_socket_path(self.run_dir, c.topic)
            chans.append(d)
        out["channels"] = chans
        return out


def _redact(key, value):
    if key in SECRET_KEYS and value:
        return "***"
    return list(value) if isinstance(value, tuple) else value


def _handler_id(handler):
    if handler is None or isinstance(handler, str):
        return handler
    return f"{getattr(handler, '__module__', '?')}:{getattr(handler, '__qualname__', repr(handler))}"


def _fingerprint_default(obj):
    if callable(obj):
        return _handler_id(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return repr(obj)


# -- socket paths --------------------------------------------------------------------------------

def _slug(topic):
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", topic).strip("-.")[:40].rstrip("-.")
    return slug or "topic"


def channel_socket_path(run_dir, topic, *, source=None):
    """``run_dir/ch-<slug of topic, at most 40 chars>-<8 hex of sha1(topic)>.sock``.

    The slug keeps the path readable; the hash keeps it unique for topics that slug alike.
    Raises ConfigError (naming run_dir) when the path would not fit a unix socket address.
    """
    digest = hashlib.sha1(topic.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    path = os.path.join(run_dir, f"ch-{_slug(topic)}-{digest}.sock")
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise ConfigError(
            f"{_prefix(source)}[pool] run_dir: the socket path {path!r} is {size} bytes, over the "
            f"{UNIX_PATH_MAX}-byte limit of a unix socket address; use a shorter run_dir "
            f"(at most {UNIX_PATH_MAX - 58} bytes always fits, e.g. /run/pool-NAME)")
    return path


# -- sizes ------------------------------------------------------------------------------------------

def parse_size(value):
    """Bytes from an int or a string like "256MiB", "1GiB", "512M", "64k", "1.5G", "100MB".

    K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; kB/MB/GB/TB are powers of 1000.
    None, "none" and 0 mean "no limit" and return None. Raises ValueError.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value or None
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError("a size in bytes must be a whole, non-negative number")
        return int(value) or None
    if not isinstance(value, str):
        raise ValueError(f"a size must be an integer or a string, not {_type_name(value)}")
    if value.strip().lower() == "none":
        return None
    m = _SIZE_RE.match(value)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _SIZE_UNITS:
        raise ValueError(f"cannot read {value!r} as a size")
    return int(float(m.group(1)) * _SIZE_UNITS[unit]) or None


# -- loading ----------------------------------------------------------------------------------------

def load_config(path=None, data=None, **overrides):
    """Read, merge and validate a configuration; return a :class:`PoolConfig`.

    ``path``: a TOML file. ``data``: a dict of the same shape ``{"pool": {...}, "channels":
    [{...}, ...]}`` (give one or neither). ``overrides``: ``[pool]`` keys as keyword arguments,
    applied on top; ``topics=[...]`` adds channels with the pool's settings. A value of None
    means "not set" (the key keeps its file value or default), except ``memory_limit=None``,
    which disables the limit. Raises :class:`pool.errors.ConfigError`.
    """
    return _Loader(path, data, overrides).load()


def _prefix(source):
    return f"{source}: " if source else ""


def _type_name(value):
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    if value is None:
        return "nothing (None)"
    return f"a {type(value).__name__}"


def _fmt_size(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit} ({n} bytes)"
    return f"{n} bytes"


def _safe_url(url):
    """A url without its query string and user info (they may carry secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable url)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _suggest(key, candidates):
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Loader:
    def __init__(self, path, data, overrides):
        self.path = None if path is None else os.fspath(path)
        self.data = data
        self.overrides = overrides
        self.source = self.path
        self.base_dir = os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()
        self.from_kwargs = set()

    # -- errors ------------------------------------------------------------------------

    def fail(self, where, problem, fix=None):
        msg = f"{_prefix(self.source)}{where}: {problem}"
        if fix:
            msg += f"; {fix}"
        raise ConfigError(msg)

    def where(self, key, channel=None):
        if channel is None:
            if key.split(".")[0].split("[")[0] in self.from_kwargs:
                return f"keyword argument {key}"
            return f"[pool] {key}"
        if channel == 0:
            return f"keyword argument topics ({key})"
        return f"[[channels]] #{channel} {key}"

    # -- reading -----------------------------------------------------------------------

    def read(self):
        if self.path is not None and self.data is not None:
            raise ConfigError("load_config: give a config file path or a data dict, not both")
        if self.path is not None:
            try:
                with open(self.path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                raise ConfigError(f"{self.path}: no such config file; check the path "
                                  f"(pool -c FILE) or create it (see docs/configuration.md)") from None
            except IsADirectoryError:
                raise ConfigError(f"{self.path}: is a directory, not a config file; "
                                  f"give the path of the TOML file") from None
            except OSError as exc:
                raise ConfigError(f"{self.path}: cannot read the config file "
                                  f"({exc.strerror or exc}); check its permissions") from None
            try:
                doc = tomllib.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{self.path}: not UTF-8 text (byte {exc.start}); "
                                  f"save the file as UTF-8") from None
            except tomllib.TOMLDecodeError as exc:
                line = getattr(exc, "lineno", None)
                if line is None:
                    m = re.search(r"line (\d+)", str(exc))
                    line = int(m.group(1)) if m else None
                at = f"line {line}: " if line else ""
                raise ConfigError(f"{self.path}: {at}TOML syntax error: {exc}; fix the syntax "
                                  f"at that line (strings need quotes, tables [pool] and "
                                  f"arrays of tables [[channels]])") from None
            return doc
        if self.data is None:
            return {}
        if not isinstance(self.data, dict):
            raise ConfigError(f"load_config: data must be a dict like {{'pool': {{...}}, "
                              f"'channels': [...]}}, got {_type_name(self.data)}")
        return self.data

    def load(self):
        doc = self.read()
        for key in doc:
            if key not in ("pool", "channels"):
                if key in POOL_KEYS:
                    fix = f"put {key!r} under the [pool] table"
                elif key in CHANNEL_KEYS:
                    fix = f"put {key!r} in a [[channels]] entry"
                else:
                    fix = "the top level holds only [pool] and [[channels]]" + \
                          _suggest(str(key), ("pool", "channels"))
                self.fail(f"top level {key!r}", "unknown key", fix)
        pool_raw = doc.get("pool", {})
        if not isinstance(pool_raw, dict):
            self.fail("[pool]", f"must be a table, got {_type_name(pool_raw)}",
                      "write the pool settings under a [pool] header")
        pool_raw = {k: v for k, v in pool_raw.items() if v is not None or k == "memory_limit"}
        channels_raw = doc.get("channels", [])
        if channels_raw is None:
            channels_raw = []
        if not isinstance(channels_raw, (list, tuple)):
            self.fail("[[channels]]", f"must be an array of tables, got {_type_name(channels_raw)}",
                      "write each channel under its own [[channels]] header")
        channels_raw = list(channels_raw)

        topics = self.overrides.pop("topics", None)
        for key, value in self.overrides.items():
            if value is None and key != "memory_limit":
                continue
            pool_raw[key] = value
            self.from_kwargs.add(key)
        if topics is not None:
            if isinstance(topics, (str, bytes)) or not isinstance(topics, (list, tuple)):
                raise ConfigError(f"{_prefix(self.source)}keyword argument topics: must be a list "
                                  f"of topic strings, got {_type_name(topics)}; "
                                  f"e.g. topics=['room:lobby']")
            channels_raw += [{"topic": t, "_index": 0} for t in topics]

        for key in pool_raw:
            if key not in POOL_KEYS:
                where = self.where(str(key))
                if key in ("topic", "payload", "handler"):
                    self.fail(where, "unknown [pool] key",
                              f"{key!r} is a per-channel key: put it in a [[channels]] entry")
                if key == "topics":
                    self.fail(where, "unknown [pool] key",
                              "list channels as [[channels]] entries with a topic each")
                self.fail(where, "unknown key",
                          "remove it" + _suggest(str(key), POOL_KEYS) +
                          "; see docs/configuration.md for every key")

        pool_raw = self.interpolate_all(pool_raw, None)
        pool = self.pool_settings(pool_raw)
        if not channels_raw:
            self.fail("[[channels]]", "no channels configured",
                      "add at least one [[channels]] entry with a topic "
                      "(or pass topics=[...])")
        channels = []
        seen = {}
        for i, raw in enumerate(channels_raw, 1):
            ch = self.channel(i, raw, pool)
            if ch.topic in seen:
                self.fail(self.where("topic", ch.index), f"duplicate topic {ch.topic!r} "
                          f"(also in {self.where('topic', seen[ch.topic])})",
                          "each topic is one channel; remove or rename one of them")
            seen[ch.topic] = ch.index
            channels.append(ch)

        pool["channels"] = channels
        cfg = PoolConfig(source=self.source, **pool)
        self.check_timing(cfg)
        try:
            for c in channels:
                channel_socket_path(cfg.run_dir, c.topic, source=self.source)
            self.check_path_fits(cfg.control_socket)
        except ConfigError as exc:
            if "run_dir" in cfg.explicit:
                raise
            raise ConfigError(f"{exc} (run_dir was not set: its default {cfg.run_dir!r} comes "
                              f"from name; set a short run_dir or a shorter name)") from None
        cfg.supervisor_config()
        try:
            validate_specs(cfg.worker_specs())
        except supervisor.ConfigError as exc:  # pragma: no cover - our own checks come first
            raise ConfigError(f"{_prefix(self.source)}[[channels]]: {exc}") from None
        return cfg

    # -- ${ENV} -----------------------------------------------------------------------------

    def interpolate_all(self, table, channel):
        return {k: self.interpolate(v, str(k), channel) for k, v in table.items()}

    def interpolate(self, value, keypath, channel):
        if isinstance(value, str):
            return self.expand(value, keypath, channel)
        if isinstance(value, dict):
            return {k: self.interpolate(v, f"{keypath}.{k}", channel) for k, v in value.items()}
        if isinstance(value, list):
            return [self.interpolate(v, f"{keypath}[{i}]", channel) for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return tuple(self.interpolate(v, f"{keypath}[{i}]", channel)
                         for i, v in enumerate(value))
        return value

    def expand(self, text, keypath, channel):
        if "${" not in text:
            return text
        out = []
        i = 0
        while True:
            j = text.find("${", i)
            if j < 0:
                out.append(text[i:])
                return "".join(out)
            if j > i and text[j - 1] == "$":  # $${ -> a literal ${
                out.append(text[i:j - 1])
                out.append("${")
                i = j + 2
                continue
            out.append(text[i:j])
            end = text.find("}", j + 2)
            if end < 0:
                self.fail(self.where(keypath, channel), "a '${' without its closing '}'",
                          "write ${NAME} to read an environment variable, or $${ for a literal ${")
            name = text[j + 2:end]
            if not _ENV_NAME_RE.match(name):
                self.fail(self.where(keypath, channel),
                          "'${...}' must hold an environment variable name (letters, digits, _)",
                          "write ${NAME}, or $${ for a literal ${")
            if name not in os.environ:
                self.fail(self.where(keypath, channel),
                          f"environment variable {name} is not set",
                          f"set {name} in the environment of the pool (or write $${{ for a "
                          f"literal ${{)")
            out.append(os.environ[name])
            i = end + 1

    # -- single values ---------------------------------------------------------------------

    def value(self, key, value, channel=None):
        kind = POOL_KEYS[key][0]
        where = self.where(key, channel)
        secret = key in SECRET_KEYS
        shown = "" if secret else f" {value!r}"

        def bad_type(expected, example):
            self.fail(where, f"must be {expected}, got {_type_name(value)}{shown}",
                      f"write e.g. {key} = {example}")

        if kind in ("seconds", "heartbeat", "seconds_or_zero", "optional_seconds"):
            if kind == "optional_seconds" and (value is None or
                                               (isinstance(value, str) and value.lower() == "none")):
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                if isinstance(value, str) and re.match(r"^\s*[0-9.]+\s*(s|sec|seconds|ms|m)?\s*$", value):
                    self.fail(where, f"must be a number of seconds, got the string {value!r}",
                              f"write a bare number without quotes or unit, e.g. {key} = "
                              f"{re.sub(r'[^0-9.]', '', value) or 10}")
                bad_type("a number of seconds", POOL_KEYS[key][1] or 10)
            if not math.isfinite(value):
                self.fail(where, f"must be a finite number of seconds, got {value!r}",
                          "use a plain number")
            if kind == "seconds_or_zero":
                if value < 0:
                    self.fail(where, f"must be >= 0 seconds, got {value!r}", "use 0 or more")
            elif value <= 0:
                fix = "use a positive number of seconds"
                if kind == "optional_seconds":
                    fix += ', or leave it out (or "none") to disable it'
                self.fail(where, f"must be > 0 seconds, got {value!r}", fix)
            if kind == "heartbeat" and value >= SERVER_IDLE_TIMEOUT:
                self.fail(where, f"must be below {SERVER_IDLE_TIMEOUT:g} s (the Phoenix server's "
                          f"idle timeout: a socket silent that long is closed), got {value!r}",
                          "use the default 25, or anything below 60 with room for a slow send")
            return float(value)
        if kind == "count":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    bad_type("a whole number", POOL_KEYS[key][1])
            if value < 0:
                self.fail(where, f"must be >= 0, got {value!r}", "use 0 or a positive integer")
            if key == "max_inflight" and value == 0:
                self.fail(where, "0 would reject every push", "use a positive integer (default 10000)")
            return value
        if kind == "size":
            if key == "memory_limit" and value is None:
                return None
            try:
                size = parse_size(value)
            except ValueError as exc:
                self.fail(where, f"{exc}", f'write bytes as an integer or a string like '
                          f'"256MiB", "1GiB", "512M"; "none" or 0 disables it')
            if size is not None and size < MIN_MEMORY_LIMIT and key == "memory_limit":
                self.fail(where, f"{size} bytes is below the minimum of 16 MiB (a Python worker "
                          f"needs more than that to start)", 'use e.g. "256MiB", or "none"')
            return size
        if kind in ("vsn", "liveness", "memory_limit_kind", "log_level"):
            choices = CHOICES[kind]
            if kind == "vsn" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.fail(where, f"must be a quoted version string, got {value!r}",
                          f"write {key} = \"2.0.0\" or \"1.0.0\"")
            if not isinstance(value, str):
                bad_type("a string", f'"{choices[0]}"')
            norm = value.strip().lower() if kind == "log_level" else value
            if kind == "vsn" and norm in ("2", "2.0", "v2"):
                norm = protocol.V2
            if kind == "vsn" and norm in ("1", "1.0", "v1"):
                norm = protocol.V1
            if norm not in choices:
                self.fail(where, f"unknown value {value!r}" + _suggest(norm, choices),
                          f"use {CHOICE_HELP[kind]}")
            return norm
        if kind == "name":
            if not isinstance(value, str) or not _NAME_RE.match(value):
                self.fail(where, f"must be 1-64 characters of letters, digits and _.:@+=- "
                          f"(starting with a letter, digit or _), got {value!r}",
                          'it appears in process titles and the default run_dir; e.g. name = "chat"')
            return value
        if kind == "url":
            if not isinstance(value, str):
                bad_type("a ws:// or wss:// url", '"wss://example.com/socket"')
            try:
                parts = urlsplit(value.strip())
                parts.port
            except ValueError:
                self.fail(where, "is not a valid url (bad port or brackets)",
                          'write e.g. url = "wss://example.com/socket"')
            if parts.scheme not in ("ws", "wss"):
                scheme = parts.scheme or "(none)"
                fix = 'write e.g. url = "wss://example.com/socket"'
                if parts.scheme in ("http", "https"):
                    fix = f"use {'wss' if parts.scheme == 'https' else 'ws'}:// (the WebSocket " \
                          f"scheme) with the same host and path"
                self.fail(where, f"must start with ws:// or wss://, got scheme {scheme!r}", fix)
            if not parts.hostname:
                self.fail(where, f"has no host ({_safe_url(value)})",
                          'write e.g. url = "wss://example.com/socket"')
            if parts.fragment:
                self.fail(where, "must not have a #fragment", "remove the part after '#'")
            return value.strip()
        if kind == "params":
            if not isinstance(value, dict):
                self.fail(where, f"must be a table of connect params, got {_type_name(value)} "
                          f"(value not shown: params may hold secrets)",
                          'write e.g. params = { token = "${API_TOKEN}" }')
            for k, v in value.items():
                if not isinstance(k, str):
                    self.fail(where, "param names must be strings", "use string keys")
                if isinstance(v, bool):
                    value = dict(value)
                    value[k] = "true" if v else "false"
                elif not isinstance(v, (str, int, float)):
                    self.fail(f"{where}.{k}", f"must be a string or a number, got {_type_name(v)} "
                              f"(value not shown: params may hold secrets)",
                              "connect params go into the url's query string: use a flat table "
                              "of strings and numbers")
            return dict(value)
        if kind == "headers":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                self.fail(where, f"must be an array of \"Name: value\" strings, got "
                          f"{_type_name(value)} (value not shown: headers may hold secrets)",
                          'write e.g. headers = ["X-Api-Key: ${API_KEY}"]')
            out = []
            for i, h in enumerate(value):
                hw = f"{where}[{i}]"
                if not isinstance(h, str):
                    self.fail(hw, f"must be a \"Name: value\" string, got {_type_name(h)}",
                              'write e.g. "X-Api-Key: ${API_KEY}"')
                name, sep, _ = h.partition(":")
                if not sep or not _HEADER_NAME_RE.match(name.strip()) or name != name.strip():
                    self.fail(hw, "must look like \"Name: value\" with a header name made of "
                              "letters, digits and -, then a colon (value not shown: headers may "
                              "hold secrets)", 'write e.g. "X-Api-Key: ${API_KEY}"')
                if "\r" in h or "\n" in h or "\0" in h:
                    self.fail(hw, "must not contain line breaks or NUL (value not shown)",
                              "put each header in its own string")
                out.append(h)
            return tuple(out)
        if kind == "secret":
            if not isinstance(value, str):
                self.fail(where, f"must be a string, got {_type_name(value)} (value not shown: "
                          f"it is a secret)", f'write e.g. {key} = "${{API_TOKEN}}"')
            if not value:
                self.fail(where, "is empty (value not shown)",
                          "leave the key out to send no token, or check the variable it reads")
            return value
        if kind in ("path", "file"):
            if not isinstance(value, str) or not value.strip():
                bad_type("a non-empty path string", '"/run/pool-chat"' if key == "run_dir"
                         else '"/path/to/file"')
            if "\0" in value:
                self.fail(where, "must not contain a NUL byte", "fix the path")
            p = os.path.expanduser(value)
            if not os.path.isabs(p):
                p = os.path.join(self.base_dir, p)
            p = os.path.normpath(p)
            if kind == "file" and not os.path.isfile(p):
                self.fail(where, f"no such file {p!r}", "give the path of a PEM file of CA "
                          "certificates (relative paths start at the config file's directory)")
            return p
        if kind == "bool":
            if not isinstance(value, bool):
                bad_type("true or false", "true")
            return value
        if kind == "group":
            import grp
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                bad_type("a group name or a numeric gid", '"www-data"')
            try:
                if isinstance(value, int) or value.isdigit():
                    grp.getgrgid(int(value))
                    return int(value)
                grp.getgrnam(value)
            except (KeyError, OverflowError):
                self.fail(where, f"no such group {value!r} on this host",
                          "create the group, or name an existing one that the client processes "
                          "(e.g. Django) belong to")
            return value
        if kind == "uids":
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                bad_type("an array of numeric uids", "[33, 1000]")
            for u in value:
                if isinstance(u, bool) or not isinstance(u, int) or u < 0:
                    self.fail(where, f"must hold only numeric uids (integers >= 0), got {u!r}",
                              "write e.g. allowed_uids = [33, 1000]")
            return tuple(value)
        raise AssertionError(kind)  # pragma: no cover

    # -- tables -------------------------------------------------------------------------------

    def pool_settings(self, raw):
        out = {}
        for key, (kind, default) in POOL_KEYS.items():
            if key in raw:
                out[key] = self.value(key, raw[key])
            elif default is _REQUIRED:
                self.fail(self.where(key), "is required",
                          'set the server\'s socket endpoint under [pool], e.g. '
                          'url = "wss://example.com/socket"')
            else:
                out[key] = default
        out["explicit"] = frozenset(raw)
        if out["run_dir"] is None:
            xdg = os.environ.get("XDG_RUNTIME_DIR")
            if xdg and os.path.isabs(xdg):
                out["run_dir"] = os.path.join(xdg, f"pool-{out['name']}")
            else:
                out["run_dir"] = f"/tmp/pool-{os.getuid()}-{out['name']}"
        if out["memory_soft_limit"] is not None and out["memory_limit"] is not None \
                and out["memory_soft_limit"] >= out["memory_limit"]:
            self.fail(self.where("memory_soft_limit"),
                      f"{_fmt_size(out['memory_soft_limit'])} is not below memory_limit "
                      f"({_fmt_size(out['memory_limit'])}): a worker would hit the hard limit before "
                      f"the graceful recycle", "lower memory_soft_limit (e.g. to 80% of "
                      "memory_limit) or raise memory_limit")
        if out["backoff_max"] < out["backoff_initial"]:
            self.fail(self.where("backoff_max"),
                      f"{out['backoff_max']:g} s is below backoff_initial "
                      f"({out['backoff_initial']:g} s)", "raise backoff_max or lower backoff_initial")
        return out

    def channel(self, i, raw, pool):
        index = raw.get("_index", i) if isinstance(raw, dict) else i
        label = f"[[channels]] #{i}" if index else "keyword argument topics"
        if not isinstance(raw, dict):
            self.fail(label, f"must be a table, got {_type_name(raw)}",
                      "start each channel with a [[channels]] header followed by topic = \"...\"")
        raw = {k: v for k, v in raw.items() if k != "_index"}
        for key in raw:
            if key not in CHANNEL_KEYS:
                if key in POOL_KEYS:
                    self.fail(self.where(str(key), index), "cannot be set per channel",
                              f"{key!r} is pool-wide: set it under [pool]")
                self.fail(self.where(str(key), index), "unknown key",
                          "remove it" + _suggest(str(key), CHANNEL_KEYS) +
                          "; see docs/configuration.md for every key")
        topic = raw.get("topic")
        where = self.where("topic", index) if index else label
        if topic is None:
            self.fail(where, "is required", 'give every channel a topic, e.g. topic = "room:lobby"')
        topic = self.expand(topic, "topic", index) if isinstance(topic, str) else topic
        if not isinstance(topic, str) or not topic.strip():
            self.fail(where, f"must be a non-empty string, got {topic!r}",
                      'e.g. topic = "room:lobby"')
        if len(topic) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in topic):
            self.fail(where, "must be at most 200 printable characters (no control characters)",
                      "shorten the topic")
        if topic == "phoenix":
            self.fail(where, "'phoenix' is reserved for the protocol's heartbeats",
                      "use another topic")
        raw = {k: v for k, v in raw.items() if k != "topic" and v is not None}
        raw = self.interpolate_all(raw, index)
        ch = {"topic": topic, "index": index}
        payload = raw.get("payload", {})
        try:
            json.dumps(payload, allow_nan=False)
        except (TypeError, ValueError):
            self.fail(self.where("payload", index), "must be a JSON value (tables, arrays, "
                      "strings, numbers, booleans); dates and times are not JSON "
                      "(value not shown: payloads may hold secrets)", "quote dates as strings")
        ch["payload"] = payload
        handler = raw.get("handler")
        if handler is not None and not callable(handler):
            if not isinstance(handler, str) or not _HANDLER_RE.match(handler):
                self.fail(self.where("handler", index),
                          f"must look like 'package.module:function', got {handler!r}",
                          'write e.g. handler = "myapp.handlers:on_message" (imported in the worker)')
        ch["handler"] = handler
        explicit = pool["explicit"]
        # secrets stay with their host: a channel talking to another origin does not get the
        # pool's params, headers or auth_token unless it sets its own
        other_origin = ("url" in raw and
                        _origin(self.value("url", raw["url"], index)) != _origin(pool["url"]))
        for key in CHANNEL_OVERRIDES:
            if key in raw:
                ch[key] = self.value(key, raw[key], index)
            elif other_origin and key in HOST_SECRETS:
                ch[key] = () if key == "headers" else None
            elif key == "heartbeat_timeout" and key not in explicit:
                ch[key] = None  # derived below from the channel's own heartbeat_interval
            elif key == "join_timeout" and key not in explicit:
                ch[key] = None
            else:
                ch[key] = pool[key]
        if ch["heartbeat_timeout"] is None:
            ch["heartbeat_timeout"] = ch["heartbeat_interval"]
        if ch["join_timeout"] is None:
            ch["join_timeout"] = ch["push_timeout"]
        return ChannelConfig(**ch)

    # -- cross-key rules ---------------------------------------------------------------------

    def check_timing(self, cfg):
        if cfg.heartbeat_timeout is None:
            cfg.heartbeat_timeout = cfg.heartbeat_interval
        if cfg.join_timeout is None:
            cfg.join_timeout = cfg.push_timeout
        worst = max(cfg.channels, key=lambda c: c.loop_pass)
        floor = cfg.min_ack_deadline
        derived = worst.loop_pass + 2 * cfg.ack_interval
        if cfg.ack_deadline is None:
            cfg.ack_deadline = derived
            return
        who = f" (channel {worst.topic!r} has the longest)" if len(cfg.channels) > 1 else ""
        if cfg.ack_deadline <= floor:
            self.fail(self.where("ack_deadline"),
                      f"{cfg.ack_deadline:g} s is too short: it must be above connect_timeout + "
                      f"send_timeout + ack_interval = {worst.connect_timeout:g} + "
                      f"{worst.send_timeout:g} + {cfg.ack_interval:g} = {floor:g} s{who}, the "
                      f"longest a healthy worker loop pass can go without acking; a shorter "
                      f"deadline kills healthy workers during a slow connect",
                      f"raise ack_deadline above {floor:g} (e.g. {derived:g}, the derived "
                      f"default: leave it out), or lower connect_timeout/send_timeout")
        if cfg.ack_deadline < 2 * cfg.ack_interval:
            self.fail(self.where("ack_deadline"),
                      f"{cfg.ack_deadline:g} s is less than twice ack_interval "
                      f"({cfg.ack_interval:g} s): one late ack would kill a healthy worker",
                      f"raise ack_deadline to at least {2 * cfg.ack_interval:g} or lower "
                      f"ack_interval")

    def check_path_fits(self, path):
        size = len(os.fsencode(path))
        if size > UNIX_PATH_MAX:
            self.fail(self.where("run_dir"), f"the control socket path {path!r} is {size} bytes, "
                      f"over the {UNIX_PATH_MAX}-byte limit of a unix socket address",
                      "use a shorter run_dir")
