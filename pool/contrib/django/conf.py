"""Read ``settings.POOL`` into a validated :class:`pool.config.PoolConfig`.

``POOL`` takes one of three forms:

- ``{"config": "/etc/pool/chat.toml"}``: a pool.toml file (the only key in this form);
- ``{"pool": {...}, "channels": [{...}, ...]}``: the TOML file's shape as a dict;
- ``{"url": ..., "channels": [{...}], ...}``: the flat form, ``[pool]`` keys at the top level
  next to ``channels``.

Everything goes through :func:`pool.config.load_config`, so the keys, the ``${ENV}``
interpolation and the validation rules are the file's (docs/configuration.md). Errors are
:class:`pool.errors.ConfigError`, prefixed with ``settings.POOL``.
"""
import copy
import os
from collections.abc import Mapping

from pool.config import load_config
from pool.errors import ConfigError

SETTING = "POOL"
PATH_KEYS = ("run_dir", "log_file", "ca_certs")


class NotConfigured(ConfigError):
    """``settings.POOL`` is not set at all."""


def raw_setting():
    """``settings.POOL`` as written, or raise :class:`NotConfigured`."""
    from django.conf import settings
    value = getattr(settings, SETTING, None)
    if value is None:
        raise NotConfigured(
            "settings.POOL is not set; add POOL = {\"config\": \"/path/to/pool.toml\"} or "
            "POOL = {\"pool\": {\"url\": \"wss://...\", \"run_dir\": \"/run/pool-NAME\"}, "
            "\"channels\": [{\"topic\": \"room:lobby\"}]} to your settings (docs/django.md)")
    return value


def _type(value):
    return type(value).__name__


def normalize(value):
    """``(path, data)`` for :func:`load_config` from a POOL setting (one of them is None)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"settings.POOL: must be a dict, got {_type(value)}; write POOL = "
                          f"{{\"config\": \"/path/to/pool.toml\"}} or POOL = {{\"pool\": {{...}}, "
                          f"\"channels\": [...]}}")
    value = dict(value)
    if "config" in value:
        others = sorted(str(k) for k in value if k != "config")
        if others:
            raise ConfigError(f"settings.POOL: 'config' names a pool.toml file and cannot be "
                              f"combined with other keys ({', '.join(others)}); put those in the "
                              f"file, or drop 'config' and write the settings here")
        path = value["config"]
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"settings.POOL['config']: must be the path of a pool.toml file, got "
                              f"{_type(path)}; write e.g. \"config\": BASE_DIR / \"pool.toml\"")
        return path, None
    value = copy.deepcopy(value)
    if "pool" in value or not (set(value) - {"channels"}):
        data = value                                         # the TOML file's shape
    else:
        channels = value.pop("channels", None)               # the flat form
        data = {"pool": value, "channels": channels}
    table = data.get("pool")
    if isinstance(table, dict):
        for key, item in table.items():
            if isinstance(item, os.PathLike):                # BASE_DIR / "run" is fine
                table[key] = os.fspath(item)
    return None, data


def load(value=None):
    """A validated PoolConfig from ``value`` (default: ``settings.POOL``). Raises ConfigError."""
    path, data = normalize(raw_setting() if value is None else value)
    try:
        return load_config(path=path, data=data)
    except ConfigError as exc:
        where = "settings.POOL['config']" if path is not None else "settings.POOL"
        raise ConfigError(f"{where}: {exc}") from None


def relative_paths(value):
    """``[(key, path)]`` of relative paths in a POOL setting: they resolve against the current
    directory, which differs between manage.py, gunicorn and celery."""
    try:
        path, data = normalize(value)
    except ConfigError:
        return []
    if path is not None:
        return [] if os.path.isabs(os.path.expanduser(path)) else [("config", path)]
    table = data.get("pool") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        return []
    return [(k, table[k]) for k in PATH_KEYS
            if isinstance(table.get(k), str) and table[k] and "${" not in table[k]
            and not os.path.isabs(os.path.expanduser(table[k]))]
