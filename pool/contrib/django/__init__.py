"""Django integration: ``INSTALLED_APPS += ["pool.contrib.django"]`` and a ``POOL`` setting.

- :func:`client` returns this process's :class:`pool.Client` for the pool described by
  ``settings.POOL``; safe to call from any thread, and correct after gunicorn, celery or
  ``os.fork`` forks (each process builds its own; each thread opens its own sockets).
- ``python manage.py pool start|status|stop|reload|push|listen|check-config`` runs the `pool`
  command with the configuration taken from the settings (``manage.py pool start`` sets Django
  up before the workers fork, so handlers can use the ORM).
- A system check validates ``POOL`` (pool.E001 invalid, pool.E002 missing, pool.E003 a handler
  that cannot be imported, pool.W001 a relative path).
- :func:`db_handler` wraps a handler that uses the ORM so its database connections follow the
  same rules as a request's.

See docs/django.md.
"""
import functools
import os
import threading

__all__ = ["client", "get_config", "reset", "db_handler", "ensure_setup", "prepare_workers"]

_lock = threading.Lock()
_config = None           # the PoolConfig read from settings.POOL (plain data: fine across fork)
_client = None           # (pid, pool.Client): rebuilt in a process that did not build it


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()  # a lock held by another thread at fork time stays held in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def get_config():
    """The validated :class:`pool.config.PoolConfig` from ``settings.POOL`` (cached).

    Raises ``django.core.exceptions.ImproperlyConfigured`` with the ConfigError's message
    (it names the key and the fix) when POOL is missing or invalid."""
    global _config
    cfg = _config
    if cfg is not None:
        return cfg
    from django.core.exceptions import ImproperlyConfigured
    from pool.errors import ConfigError
    from . import conf
    with _lock:
        if _config is None:
            try:
                _config = conf.load()
            except ConfigError as exc:
                raise ImproperlyConfigured(str(exc)) from None
        return _config


def client():
    """This process's :class:`pool.Client` for the pool of ``settings.POOL``.

    Every push is bounded (default timeout: POOL's ``push_timeout``; pass ``timeout=`` to
    override per call) and ends in one outcome: the reply, or ReplyError, PushTimeout,
    Rejected, WorkerLost, NotRunning (all ``pool.PoolError``)."""
    global _client
    cached = _client
    pid = os.getpid()
    if cached is not None and cached[0] == pid:
        return cached[1]
    cfg = get_config()
    from pool.client import Client
    with _lock:
        if _client is None or _client[0] != pid:
            _client = (pid, Client(cfg, timeout=cfg.push_timeout))
        return _client[1]


def reset():
    """Forget the cached configuration and client (the next call re-reads settings.POOL).
    Connected to Django's ``setting_changed`` signal, so ``override_settings(POOL=...)`` works."""
    global _config, _client
    with _lock:
        cached, _config, _client = _client, None, None
    if cached is not None and cached[0] == os.getpid():
        cached[1].close()


def ensure_setup():
    """Call ``django.setup()`` unless the app registry is already loaded.

    ``manage.py pool start`` sets Django up before the workers fork, so handlers need nothing.
    A handler module run by the plain ``pool start -c pool.toml`` (with DJANGO_SETTINGS_MODULE
    in its environment) calls this before importing models."""
    from django.apps import apps
    if not apps.ready:
        import django
        django.setup()


def prepare_workers(cfg):
    """Run in the supervisor just before it forks the workers (by ``manage.py pool start``, and
    by ``pool start`` when DJANGO_SETTINGS_MODULE is set): set Django up, import the handler
    modules so every worker starts warm, and close every database connection so no worker
    shares one with its parent or siblings (each opens its own on first use)."""
    import logging

    from django.db import connections

    from pool.worker import resolve_handler

    ensure_setup()
    for ch in cfg.channels:
        # One that fails is left to its worker: a boot failure is a crash of that channel only.
        if isinstance(ch.handler, str):
            try:
                resolve_handler(ch.handler)
            except Exception as exc:
                logging.getLogger("pool.django").error(
                    "handler_import_failed topic=%s handler=%s error=%s", ch.topic,
                    ch.handler, f"{type(exc).__name__}: {exc}")
    connections.close_all()


def db_handler(func):
    """Decorate a ``handler(message)`` that uses the ORM.

    The worker is a long-lived process with no requests, so nothing else would ever drop a
    broken or expired connection: like Django around each request, this closes connections
    that are unusable or older than ``CONN_MAX_AGE`` before and after each call (with the
    default CONN_MAX_AGE = 0, each message gets a fresh connection). A handler runs in the
    worker's loop: keep it short (well under ``ack_deadline``), hand heavy work to a task queue.
    """
    @functools.wraps(func)
    def wrapper(message):
        from django.db import close_old_connections
        close_old_connections()
        try:
            return func(message)
        finally:
            close_old_connections()
    return wrapper
