"""Everything that runs in a forked worker before (and around) the target.

``child_main(boot)`` is the worker's whole life: set up the process (process group, parent-death
signal, inherited supervisor fds closed, faulthandler, signals, rlimits, malloc arenas, title), run
``target(ctx, *args, **kwargs)``, map how it ended to an exit code, ``os._exit``.
"""

import ctypes
import faulthandler
import logging
import os
import resource
import select
import signal
import sys
import threading
import time
import traceback

from . import ack as _ack
from . import exitcodes, titles

log = logging.getLogger("supervisor")

#: the signal a worker registers with faulthandler: the supervisor sends it before killing a
#: wedged worker (and on the control command ``dump``), so the Python stack reaches the log
DUMP_SIGNAL = signal.SIGUSR2
#: signals blocked in the supervisor around fork, unblocked by the child once its handlers are set
FORK_BLOCKED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                          signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD})
_PR_SET_PDEATHSIG = 1
_M_ARENA_MAX = -8


def set_pdeathsig(sig=signal.SIGKILL, expected_ppid=None):
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux
    ``PR_SET_PDEATHSIG``), then re-check the parent: if it died before the call, the signal will
    never come. Returns False when the parent is already gone (the caller should exit), True
    otherwise (also when prctl is unavailable: then only the other layers protect).

    Note: the kernel tracks the parent *thread* that forked us; the supervisor has no threads.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return True
    except (OSError, AttributeError):
        return True
    if expected_ppid is not None and os.getppid() != expected_ppid:
        return False
    return True


class WorkerContext:
    """What a target gets as its first argument: the worker side of the liveness contract.

    The contract (a target that honours it can be supervised; the supervisor knows nothing else):

    1. **Ack from your own loop.** Call ``ctx.ack(state, ready=..., heartbeat_age=...)`` from the
       worker's main loop at least every ``ctx.ack_interval`` seconds -- never from a helper thread:
       an ack must prove that the loop that does the work is turning. If no ack arrives for
       ``ack_deadline`` (or none at all within ``boot_timeout`` after the start), the worker is
       considered wedged: its stack is dumped to the log, it is killed (SIGTERM to its process
       group, SIGKILL after ``kill_timeout``) and replaced. ``ack`` never blocks and is cheap:
       identical acks are coalesced to about four per ``ack_interval``, so calling it on every loop
       pass is fine.
    2. **Readiness is separate from liveness.** ``ready=True`` means "doing its job" (e.g. channel
       joined). A worker that acks with ``ready=False`` is alive but *degraded*: reported, never
       killed for it (a restart would not help). ``state`` is a short word shown in status
       ("connecting", "joined", "backoff", "forbidden", ...). ``heartbeat_age``: seconds since
       the last reply from the remote peer; if ``heartbeat_limit`` is configured, a worker that
       claims ``ready=True`` while that age exceeds the limit is treated as wedged. ``info``: a
       small dict shown in status (the encoded ack stays under 512 bytes; a larger info is
       replaced by ``{"truncated": true}``). Never put a secret in state or info.
    3. **Wait on ``ctx.wait_fds()``.** Include these fds in every select/poll of the loop (and keep
       every other wait bounded by about ``ack_interval``). When one is readable: if
       ``ctx.stop_requested`` -> finish up within ``ctx.shutdown_timeout`` (leave channels, close
       sockets) and return; if not ``ctx.parent_alive()`` -> exit at once with
       ``raise SystemExit(exitcodes.LOST_PARENT)``.
    4. **Exit codes.** Returning None means exit code 0; returning an int 0..255 makes it the exit
       code (e.g. ``return exitcodes.LOST_PARENT``). Either way the slot is respawned (with backoff
       unless the supervisor asked it to stop): a target is expected to run until told to stop. ``raise SystemExit(exitcodes.RECYCLE)`` asks to be
       replaced (not counted as a crash). An exception before the first ack is a boot failure, after
       it an unexpected exit; a ``MemoryError`` anywhere in the exception chain exits with
       ``exitcodes.MEMORY``. All of these except RECYCLE count as crashes (backoff, then FATAL).
    5. **Memory.** The worker runs under ``RLIMIT_DATA`` (or ``RLIMIT_AS``) = ``memory_limit``,
       without core dumps and with ``MALLOC_ARENA_MAX=2``; don't start threads (each costs address
       space and breaks "an ack proves the loop turns").
    6. **Signals.** SIGTERM and SIGINT set ``stop_requested`` (and wake ``wait_fds``); the dump
       signal (``child.DUMP_SIGNAL``, SIGUSR2) writes every thread's stack to stderr. The worker
       leads its own process group: whatever it starts is killed with it. Its title is
       ``"<prefix>: worker [<name>] <detail>"``; call ``ctx.set_title(detail)`` on state changes
       only (e.g. ``f"{topic} joined"``), never with a secret.
    """

    def __init__(self, *, slot, name, ack_interval, shutdown_timeout, title_prefix, writer,
                 stop_r, stop_w, lifeline_r, ppid):
        self.slot = slot
        self.name = name
        self.ack_interval = ack_interval
        self.shutdown_timeout = shutdown_timeout
        self._title_prefix = title_prefix
        self._writer = writer
        self._stop_r = stop_r
        self._stop_w = stop_w
        self._lifeline_r = lifeline_r
        self._ppid = ppid
        self._stop = False
        self._parent_gone = False
        self._acked = False
        self._last_key = None
        self._last_sent = 0.0
        self._coalesce = ack_interval / 4.0
        self._main_ident = threading.get_ident()

    # -- liveness ----------------------------------------------------------------------------
    def ack(self, state, *, ready=False, heartbeat_age=None, info=None):
        """Prove the loop turns; report state. Never blocks. Main thread only."""
        if threading.get_ident() != self._main_ident:
            raise RuntimeError("ctx.ack() must be called from the worker's main loop, not a thread")
        now = time.monotonic()
        key = (state, bool(ready), repr(info) if info else None)
        if key == self._last_key and now - self._last_sent < self._coalesce:
            return
        self._last_key = key
        self._last_sent = now
        self._acked = True
        self._writer.write(_ack.encode(state, ready, heartbeat_age, info))
        if self._writer.broken:
            self._parent_gone = True

    @property
    def acked(self):
        """True once the first ack was sent (an exception before it is a boot failure)."""
        return self._acked

    # -- stop and parent ---------------------------------------------------------------------
    def wait_fds(self):
        """Fds to include in the loop's select/poll: readable => stop requested or parent gone."""
        return [self._stop_r, self._lifeline_r]

    @property
    def stop_requested(self):
        """True once the supervisor asked for a graceful stop (SIGTERM). Drains the wakeup pipe."""
        if self._stop:  # the handler sets the flag before it pokes the pipe: nothing to drain else
            try:
                while os.read(self._stop_r, 512):
                    pass
            except (BlockingIOError, OSError):
                pass
        return self._stop

    def parent_alive(self):
        """False once the supervisor is gone (its lifeline pipe hit EOF, or we were reparented)."""
        if self._parent_gone:
            return False
        if os.getppid() != self._ppid:
            self._parent_gone = True
            return False
        poller = select.poll()  # not select(): no limit on the descriptor's number
        poller.register(self._lifeline_r, select.POLLIN)
        try:
            r = poller.poll(0)
        except OSError:
            r = True
        if r:
            self._parent_gone = True
        return not self._parent_gone

    def set_title(self, detail):
        """Title ``"<prefix>: worker [<name>] <detail>"``; honours POOL_NOSETPS=1. Call on state
        changes only."""
        titles.set_title(titles.worker_title(self._title_prefix, self.name, detail))

    # -- internal ----------------------------------------------------------------------------
    def _on_stop_signal(self, signum, frame):
        # a signal handler: set a flag and poke the pipe, nothing else (no logging, no locks)
        self._stop = True
        try:
            os.write(self._stop_w, b"s")
        except OSError:
            pass


class ChildBoot:
    """What the supervisor hands to a forked worker (no pickling: fork copies it)."""

    def __init__(self, *, spec, config, ack_kind, ack_fd, lifeline_r, ppid, close_fds, close_socks):
        self.spec = spec
        self.config = config
        self.ack_kind = ack_kind
        self.ack_fd = ack_fd
        self.lifeline_r = lifeline_r
        self.ppid = ppid
        self.close_fds = close_fds
        self.close_socks = close_socks


def _close_inherited(boot):
    for sock in boot.close_socks:
        try:
            fd = sock.detach()   # so the socket object never closes a reused fd number later
            if fd >= 0:
                os.close(fd)
        except OSError:
            pass
    for fd in boot.close_fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _set_rlimits(config):
    if config.memory_limit:
        which = resource.RLIMIT_AS if config.memory_limit_kind == "as" else resource.RLIMIT_DATA
        _soft, hard = resource.getrlimit(which)
        lim = config.memory_limit
        if hard != resource.RLIM_INFINITY:
            lim = min(lim, hard)
        resource.setrlimit(which, (lim, lim))
    _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    os.environ["MALLOC_ARENA_MAX"] = "2"
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def _log_file_stream():
    """The stream of the root logger's file handler, if the process logs to a file."""
    import logging
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            return handler.stream
    return None


def _register_faulthandler():
    """Stacks go to the log: the root logger's log file if there is one, else stderr. A worker
    without a usable sys.stderr falls back to fd 2; without that it runs on with the dump
    signal ignored rather than killed by it."""
    for out in (_log_file_stream(), sys.stderr, 2):
        if out is None:
            continue
        try:
            faulthandler.register(DUMP_SIGNAL, file=out, all_threads=True, chain=False)
            faulthandler.enable(file=out, all_threads=True)
            return
        except (AttributeError, ValueError, OSError, RuntimeError, TypeError):
            continue
    signal.signal(DUMP_SIGNAL, signal.SIG_IGN)


def _is_memory_error(exc):
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _write_stderr(msg):
    try:
        os.write(2, msg.encode("utf-8", "replace"))
    except OSError:
        pass


def _flush_and_exit(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def child_main(boot):
    """Entry point of a forked worker (the multiprocess Process target). Never returns."""
    code = exitcodes.BOOT_FAILURE
    ctx = None
    spec = boot.spec
    cfg = boot.config
    try:
        # faulthandler first: from here on the dump signal prints the stack instead of killing
        _register_faulthandler()
        os.setpgid(0, 0)
        if not set_pdeathsig(signal.SIGKILL, boot.ppid):
            _flush_and_exit(exitcodes.LOST_PARENT)
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        _close_inherited(boot)
        stop_r, stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        if boot.ack_kind == "file":
            writer = _ack.FileAckWriter(boot.ack_fd)
        else:
            writer = _ack.PipeAckWriter(boot.ack_fd)
        ctx = WorkerContext(slot=spec.slot, name=cfg.name, ack_interval=cfg.ack_interval,
                            shutdown_timeout=cfg.shutdown_timeout, title_prefix=cfg.title_prefix,
                            writer=writer, stop_r=stop_r, stop_w=stop_w,
                            lifeline_r=boot.lifeline_r, ppid=boot.ppid)
        for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)   # Python's own default: EPIPE, not death
        signal.signal(signal.SIGTERM, ctx._on_stop_signal)
        signal.signal(signal.SIGINT, ctx._on_stop_signal)
        _set_rlimits(cfg)
        ctx.set_title(f"{spec.slot} starting")
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
        # -- the target ------------------------------------------------------------------------
        result = spec.target(ctx, *spec.args, **spec.kwargs)
        # returning an int (e.g. exitcodes.LOST_PARENT) makes it the exit code; anything else is 0
        code = result if isinstance(result, int) and not isinstance(result, bool) \
            and 0 <= result < 256 else exitcodes.OK
    except SystemExit as e:
        if e.code is None:
            code = exitcodes.OK
        elif isinstance(e.code, int):
            code = e.code
        else:
            code = exitcodes.UNEXPECTED
    except BaseException as e:  # noqa: B902 - the worker's top: every way out has an exit code
        if _is_memory_error(e):
            _write_stderr(f"supervisor: worker slot={spec.slot} pid={os.getpid()} MemoryError: "
                          f"exiting with code {exitcodes.MEMORY}\n")
            code = exitcodes.MEMORY
        else:
            code = exitcodes.BOOT_FAILURE if ctx is None or not ctx.acked else exitcodes.UNEXPECTED
            try:
                log.error("event=worker_exception slot=%s pid=%d code=%d error=%r\n%s",
                          spec.slot, os.getpid(), code, f"{type(e).__name__}: {e}",
                          "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
            except BaseException:
                _write_stderr(f"supervisor: worker slot={spec.slot} exception {type(e).__name__}\n")
    _flush_and_exit(code)
