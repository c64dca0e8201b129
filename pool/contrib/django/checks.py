"""System checks for ``settings.POOL`` (registered by the app's ``ready()``).

- pool.E001: POOL is invalid. The message is load_config's: it names the key and the fix.
- pool.E002: POOL is not set.
- pool.E003: a channel's ``handler`` ("module:function") cannot be imported.
- pool.W001: a relative path in POOL (it resolves against each process's current directory).

Silence one with ``SILENCED_SYSTEM_CHECKS = ["pool.E002"]`` (e.g. where no pool runs).
"""
from django.core import checks

from pool.errors import ConfigError

from . import conf

HINT = ("POOL takes the keys of pool.toml (docs/configuration.md): POOL = {\"pool\": {...}, "
        "\"channels\": [...]}, the flat form {\"url\": ..., \"channels\": [...], ...}, or "
        "{\"config\": \"/path/to/pool.toml\"}")


def check_pool_settings(app_configs=None, **kwargs):
    try:
        value = conf.raw_setting()
    except conf.NotConfigured as exc:
        return [checks.Error(str(exc), hint="or, where no pool is used, silence this check: "
                             "SILENCED_SYSTEM_CHECKS = [\"pool.E002\"]", obj="settings.POOL",
                             id="pool.E002")]
    issues = [checks.Warning(f"{key} {path!r} is a relative path; it resolves "
                             f"against the current directory, which differs between manage.py, "
                             f"gunicorn and celery", hint="use an absolute path, e.g. "
                             f"BASE_DIR / {path!r}", obj="settings.POOL", id="pool.W001")
              for key, path in conf.relative_paths(value)]
    try:
        cfg = conf.load(value)
    except ConfigError as exc:
        message = str(exc)
        if message.startswith("settings.POOL: "):  # obj already says so
            message = message[len("settings.POOL: "):]
        return issues + [checks.Error(message, hint=HINT, obj="settings.POOL", id="pool.E001")]
    from pool.worker import resolve_handler
    for ch in cfg.channels:
        if not isinstance(ch.handler, str):
            continue
        try:
            resolve_handler(ch.handler)
        except Exception as exc:  # ImportError, AttributeError, ValueError, or the module's own
            issues.append(checks.Error(
                f"channel {ch.topic!r} handler {ch.handler!r} cannot be imported: "
                f"{type(exc).__name__}: {exc}",
                hint="the worker imports it as 'package.module:function'; check the module path "
                     "and the function name", obj="settings.POOL", id="pool.E003"))
    return issues
