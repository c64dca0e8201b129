"""The supervisor: one single-threaded loop with one wait point.

Each pass of ``Supervisor.run()`` reads like a to-do list::

    handle signals -> reap the exited -> read acks -> kill the silent -> check memory and age
    -> spawn what is due -> serve the control socket -> titles, systemd notify

and then waits in ``multiprocess.connection.wait`` on everything at once (the signal wakeup pipe,
worker sentinels, ack pipes, the control socket and its clients) until something happens or the
next deadline is due. Nothing in here sleeps or blocks on a worker. ``_set_state`` is the only
place a slot's state changes.
"""

import collections
import logging
import os
import random
import signal
import stat
import threading
import time

import multiprocess as mp
from multiprocess.connection import wait as mp_wait

from . import ack as _ack
from . import procinfo, reasons, titles
from .child import DUMP_SIGNAL, FORK_BLOCKED, ChildBoot, child_main
from .config import SupervisorConfig, validate_specs
from .control import ControlServer
from .errors import ConfigError
from .exitcodes import ALL_FATAL, OK
from .notify import Notifier
from .pidfile import PidFile
from .policy import RestartPolicy, jittered
from .states import LIVE, SlotState, check_transition

log = logging.getLogger("supervisor")
S = SlotState

#: time between the dump signal and SIGTERM, so the stack is written before the worker dies
DUMP_GRACE = 0.1
#: longest wait in pipe mode (memory checks and the safety-net poll of every worker)
MAX_WAIT = 1.0
#: how often every live worker is polled even without a sentinel event
POLL_ALL_EVERY = 1.0
#: acks are read in batches at most this often (and at most every ack_interval / 4) (each ack need not wake a whole pass: with hundreds
#: of workers that costs a core). Batching only delays the stamp of an ack, which makes a silence
#: look shorter, never longer; and a worker's channel is read once more right before a kill.
ACK_BATCH = 0.25
EXIT_REASONS_KEPT = 5
SPAWN_BATCH = 20  # forks per loop pass at most
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)


def _kv(event, **fields):
    parts = [f"event={event}"]
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, float):
            v = f"{v:.3f}"
        v = str(v)
        if not v or any(c in v for c in ' "=') or any(ord(c) < 32 for c in v):
            v = '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        parts.append(f"{k}={v}")
    return " ".join(parts)


class StopPlan:
    """A kill or stop in progress, escalated by elapsed time (never by loop pass)."""

    __slots__ = ("kind", "reason", "started", "stage", "next_at")

    def __init__(self, kind, reason, started):
        self.kind = kind          # "kill" (wedged), "graceful", "fast"
        self.reason = reason      # becomes the exit reason
        self.started = started
        self.stage = 0
        self.next_at = started


class Slot:
    """One supervised unit and its current worker (at most one)."""

    def __init__(self, spec, policy):
        self.spec = spec
        self.policy = policy
        self.state = S.STOPPED
        self.state_since = None
        self.next_start_at = 0.0
        self.removed = False
        self.pending_spec = None
        self.restarts = 0           # respawns of any kind after the first start
        self.crashes = 0            # counted exits (these drive backoff and FATAL)
        self.spawned = 0
        self.ever_ready = False     # ready at least once (READY=1 to systemd waits for this)
        self.exit_reasons = collections.deque(maxlen=EXIT_REASONS_KEPT)
        self._clear_worker()

    def _clear_worker(self):
        self.proc = None
        self.pid = None
        self.ack = None
        self.lifeline_w = None
        self.started_at = None
        self.first_ack_at = None
        self.last_ack_at = None
        self.acks = 0
        self.ready = False
        self.ready_since = None
        self.stable = False
        self.worker_state = None
        self.heartbeat_age = None
        self.heartbeat_at = None
        self.info = None
        self.recycle_at = None
        self.next_mem_check = 0.0
        self.rss = None
        self.plan = None
        self.sent_sigkill = False

    @property
    def name(self):
        return self.spec.slot

    def kill_reason(self):
        return self.plan.reason if self.plan is not None and self.plan.kind == "kill" else None

    def stop_reason(self):
        return self.plan.reason if self.plan is not None and self.plan.kind != "kill" else None


class Supervisor:
    """Spawn one worker per WorkerSpec, watch their acks, kill the silent, respawn with backoff.

    ``reload``: optional ``callable() -> list[WorkerSpec]``, called on SIGHUP or the control command
    ``reload``; slots are diffed by ``slot`` + ``fingerprint``. ``on_event``: optional
    ``callable(dict)`` called from the main loop (never from a signal handler) for every event
    (``spawned``, ``state``, ``ready``, ``kill``, ``exited``, ``backoff``, ``fatal``, ...).
    """

    def __init__(self, config, specs, reload=None, on_event=None, *, clock=time.monotonic,
                 rng=random.random):
        if not isinstance(config, SupervisorConfig):
            raise ConfigError("config must be a SupervisorConfig")
        self.config = config.validate()
        self.clock = clock
        self.rng = rng
        self._reload_fn = reload
        self._on_event = on_event
        self._slots = collections.OrderedDict()
        for spec in validate_specs(list(specs)):
            self._slots[spec.slot] = Slot(spec, self._new_policy())
        cfg = self.config
        self.run_dir = os.path.abspath(cfg.run_dir)
        self.control_path = cfg.control_socket or os.path.join(self.run_dir, "supervisor.sock")
        self.pidfile_path = cfg.pidfile or os.path.join(self.run_dir, "supervisor.pid")
        self._mp = mp.get_context("fork")
        self._state = "new"
        self._started_at = None
        self._stopping = False
        self._fast = False
        self._exit_code = OK
        self._pending_signals = collections.deque(maxlen=256)   # bounded, even under a signal flood
        self._wake_r = self._wake_w = None
        self._old_handlers = {}
        self._old_wakeup = -1
        self._pidfile = None
        self._control = None
        self._notifier = None
        self._ack_dir = None
        self._ready = set()
        self._last_title = None
        self._next_poll_all = 0.0
        self._next_ack_read = 0.0
        self._status_line = None
        titles.init()

    def _new_policy(self):
        c = self.config
        return RestartPolicy(backoff_initial=c.backoff_initial, backoff_max=c.backoff_max,
                             max_restarts=c.max_restarts, restart_window=c.restart_window,
                             fatal_retry=c.fatal_retry, min_uptime=c.min_uptime,
                             clock=self.clock, rng=self.rng)

    # ================================================================== lifecycle
    def run(self):
        """Run until stopped. Returns exitcodes.OK after a stop by signal or control command,
        exitcodes.ALL_FATAL when every slot is FATAL. Raises AlreadyRunning or ConfigError before
        anything starts. Must be called from the main thread of a process without other threads."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Supervisor.run() must be called from the main thread")
        self._startup()
        try:
            while True:
                self._pass()
                if self._stopping and not any(s.state in LIVE for s in self._slots.values()):
                    break
                acks_due = self.clock() >= self._next_ack_read
                self._ready = set(mp_wait(self._wait_objects(acks_due), self._next_timeout(acks_due)))
        finally:
            self._shutdown_cleanup()
        return self._exit_code

    def _startup(self):
        cfg = self.config
        self._prepare_run_dir()
        self._pidfile = PidFile(self.pidfile_path).acquire()
        try:
            if cfg.liveness == "file":
                self._ack_dir = _ack.choose_ack_dir(self.run_dir, cfg.ack_dir)
                if self._ack_dir is None:
                    raise ConfigError("liveness='file' needs a tmpfs directory for ack files "
                                      "(run_dir on tmpfs, or /dev/shm, or ack_dir): a disk-backed "
                                      "file stalls and causes false kills; use liveness='pipe'")
            self._control = ControlServer(self.control_path, group=cfg.socket_group,
                                          allowed_uids=cfg.allowed_uids,
                                          client_timeout=cfg.control_timeout, clock=self.clock).open()
            self._notifier = Notifier(clock=self.clock)
            self._install_signals()
        except BaseException:
            if self._control is not None:
                self._control.close()
            self._pidfile.release()
            raise
        if threading.active_count() > 1:
            log.warning(_kv("threads_present", pool=cfg.name, count=threading.active_count(),
                            note="forking from a threaded process can deadlock workers"))
        self._started_at = self.clock()
        self._state = "starting"
        log.info(_kv("supervisor_started", pool=cfg.name, pid=os.getpid(), slots=len(self._slots),
                     liveness=cfg.liveness, control=self.control_path))
        self._emit("started", pid=os.getpid())

    def _prepare_run_dir(self):
        d = self.run_dir
        if not os.path.isdir(d):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
        st = os.stat(d)
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(f"run_dir {d} is writable by group or others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}): chmod 0700 it (or 0750 with "
                              f"socket_group)")
        if st.st_uid not in (os.getuid(), 0):
            raise ConfigError(f"run_dir {d} belongs to uid {st.st_uid}, not to us ({os.getuid()})")

    def _install_signals(self):
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED_SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)

    def _on_signal(self, signum, frame):
        # signal handler: record, nothing else (the wakeup fd wakes the loop)
        self._pending_signals.append(signum)

    def _shutdown_cleanup(self):
        cfg = self.config
        # never leave a worker behind, whatever ended the loop
        for slot in self._slots.values():
            if slot.proc is not None:
                self._signal_group(slot, signal.SIGKILL)
                slot.proc.join(5)
                self._release_worker(slot)
        if self._control is not None:
            self._control.flush_all()
            self._control.close()
        if self._notifier is not None:
            self._notifier.close()
        if self._wake_r is not None:
            try:
                signal.set_wakeup_fd(self._old_wakeup)
            except (ValueError, OSError):
                signal.set_wakeup_fd(-1)
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old if old is not None else signal.SIG_DFL)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = None
        if self._pidfile is not None:
            self._pidfile.release()
        self._state = "stopped"
        log.info(_kv("supervisor_stopped", pool=cfg.name, pid=os.getpid(), code=self._exit_code))
        self._emit("stopped", code=self._exit_code)

    # ================================================================== the pass
    def _pass(self):
        self._handle_signals()
        self._reap()
        self._read_acks()
        self._murder_silent()
        self._check_memory_and_age()
        self._spawn_due()
        self._serve_control()
        self._report()

    def _wait_objects(self, acks_due=True):
        objs = [self._wake_r]
        for slot in self._slots.values():
            if slot.proc is not None:
                objs.append(slot.proc.sentinel)
                if acks_due and slot.ack is not None and slot.ack.kind == "pipe" and not slot.ack.eof:
                    objs.append(slot.ack.fd)
        objs.extend(self._control.wait_objects())
        return objs

    def _ack_batch(self):
        cfg = self.config
        if cfg.liveness == "file":
            return min(0.5, cfg.ack_interval)          # the file sweep
        return min(ACK_BATCH, cfg.ack_interval / 4)

    def _next_timeout(self, acks_due=True):
        now = self.clock()
        cfg = self.config
        cap = MAX_WAIT
        if cfg.liveness == "file" or not acks_due:
            cap = min(cap, max(0.0, self._next_ack_read - now))
        if self._control.has_pending_output():
            cap = min(cap, 0.02)
        deadlines = [self._next_poll_all]
        for slot in self._slots.values():
            d = self._slot_deadline(slot)
            if d is not None:
                deadlines.append(d)
        d = self._control.next_deadline()
        if d is not None:
            deadlines.append(d)
        d = self._notifier.next_deadline()
        if d is not None:
            deadlines.append(d)
        return max(0.0, min(cap, min(deadlines) - now))

    def _slot_deadline(self, slot):
        cfg = self.config
        st = slot.state
        if st == S.STOPPING:
            return slot.plan.next_at if slot.plan is not None and slot.plan.stage < 3 else None
        if st in (S.BACKOFF, S.STOPPED):
            return None if self._stopping or slot.removed else slot.next_start_at
        if st == S.FATAL:
            return None if self._stopping else slot.next_start_at
        if st not in LIVE:
            return None
        ds = []
        if slot.first_ack_at is None:
            ds.append(slot.started_at + cfg.effective_boot_timeout)
        else:
            ds.append(slot.last_ack_at + cfg.ack_deadline)
        hb = self._heartbeat_deadline(slot)
        if hb is not None:
            ds.append(hb)
        if slot.recycle_at is not None:
            ds.append(slot.recycle_at)
        if slot.ready and not slot.stable:
            ds.append(slot.ready_since + cfg.min_uptime)
        if cfg.memory_soft_limit:
            ds.append(slot.next_mem_check)
        return min(ds)

    def _heartbeat_deadline(self, slot):
        """Judged on the age the worker reported in its last ack, never extrapolated: when the
        acks themselves stop, the ack deadline decides, and the exit reason says so."""
        lim = self.config.heartbeat_limit
        if lim is None or not slot.ready or slot.heartbeat_age is None:
            return None
        return slot.heartbeat_at if slot.heartbeat_age > lim else None

    # ================================================================== 1. signals
    def _handle_signals(self):
        if self._wake_r in self._ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        while True:
            try:
                sig = self._pending_signals.popleft()
            except IndexError:
                return
            name = reasons.signal_name(sig)
            log.info(_kv("signal", pool=self.config.name, signal=name))
            if sig == signal.SIGTERM:
                self.stop(fast=self._stopping)     # a second TERM means "now"
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                self.stop(fast=True)
            elif sig == signal.SIGHUP:
                self.reload()
            elif sig == signal.SIGUSR1:
                self._reopen_logs()

    def _reopen_logs(self):
        count = 0
        seen = set()
        for lg in (logging.getLogger(), log):
            for h in lg.handlers:
                if isinstance(h, logging.FileHandler) and id(h) not in seen:
                    seen.add(id(h))
                    h.acquire()
                    try:
                        if h.stream is not None:
                            h.stream.close()
                        h.stream = h._open()
                        count += 1
                    except OSError as e:
                        h.stream = None
                        log.error(_kv("log_reopen_failed", file=h.baseFilename, error=str(e)))
                    finally:
                        h.release()
        log.info(_kv("logs_reopened", pool=self.config.name, handlers=count))

    # ================================================================== 2. reap
    def _reap(self):
        now = self.clock()
        poll_all = now >= self._next_poll_all
        if poll_all:
            self._next_poll_all = now + POLL_ALL_EVERY
        for slot in list(self._slots.values()):
            proc = slot.proc
            if proc is None:
                continue
            if not poll_all and proc.sentinel not in self._ready:
                continue
            code = proc.exitcode          # multiprocess: waitpid(pid, WNOHANG), this pid only
            if code is not None:
                self._on_exit(slot, code)

    def _on_exit(self, slot, exitcode):
        now = self.clock()
        cfg = self.config
        if slot.ack is not None:          # acks written just before the exit still count
            got, rec = slot.ack.read()
            if got:
                self._on_ack(slot, rec, now)
        reason, counted = reasons.exit_reason(exitcode, kill_reason=slot.kill_reason(),
                                              stop_reason=slot.stop_reason(),
                                              sent_sigkill=slot.sent_sigkill)
        pid = slot.pid
        uptime = now - slot.started_at if slot.started_at is not None else None
        if slot.ready and slot.policy.is_stable(slot.ready_since, now) and not slot.stable:
            slot.policy.stable()
        status = reasons.describe_status(exitcode)
        slot.exit_reasons.append({"reason": reason, "exit": status, "pid": pid,
                                  "time": round(time.time(), 3)})
        if counted:
            slot.crashes += 1
        lvl = logging.WARNING if counted else logging.INFO
        log.log(lvl, _kv("exited", pool=cfg.name, slot=slot.name, pid=pid, reason=reason,
                         exit=status, counted=counted, uptime=uptime))
        self._emit("exited", slot=slot.name, pid=pid, reason=reason, exitcode=exitcode,
                   counted=counted, uptime=uptime)
        self._release_worker(slot)
        # what next?
        if slot.removed and slot.pending_spec is None:
            self._set_state(slot, S.STOPPED, reason)
            del self._slots[slot.name]
            return
        if self._stopping:
            self._set_state(slot, S.STOPPED, reason)
            return
        if slot.pending_spec is not None:       # reloaded with a changed spec: start it now
            slot.spec, slot.pending_spec = slot.pending_spec, None
            slot.removed = False
            slot.policy = self._new_policy()
            slot.next_start_at = now
            self._set_state(slot, S.BACKOFF, reason)
            return
        if not counted:
            slot.next_start_at = now
            self._set_state(slot, S.BACKOFF, reason)
            return
        decision, delay = slot.policy.on_crash()
        slot.next_start_at = now + delay
        if decision == "fatal":
            self._set_state(slot, S.FATAL, reason)
            log.error(_kv("fatal", pool=cfg.name, slot=slot.name, crashes=slot.crashes,
                          window=cfg.restart_window, retry_in=delay))
            self._emit("fatal", slot=slot.name, retry_in=delay)
        else:
            self._set_state(slot, S.BACKOFF, reason)
            log.info(_kv("backoff", pool=cfg.name, slot=slot.name, delay=delay))
            self._emit("backoff", slot=slot.name, delay=delay)

    def _release_worker(self, slot):
        """Close everything the supervisor held for this worker; kill stragglers in its group."""
        if slot.pid is not None:
            try:
                os.killpg(slot.pid, signal.SIGKILL)   # anything the worker started dies with it
            except (ProcessLookupError, PermissionError):
                pass
        if slot.ack is not None:
            slot.ack.close()
        if slot.lifeline_w is not None:
            try:
                os.close(slot.lifeline_w)
            except OSError:
                pass
        if slot.proc is not None:
            try:
                slot.proc.close()
            except ValueError:     # still running (only at a forced cleanup): leave it to GC
                pass
        slot._clear_worker()

    # ================================================================== 3. acks
    def _read_acks(self):
        now = self.clock()
        if now < self._next_ack_read:
            return
        file_mode = self.config.liveness == "file"
        got_any = file_mode
        for slot in self._slots.values():
            a = slot.ack
            if a is None:
                continue
            if not file_mode and a.fd not in self._ready:
                continue
            got_any = True
            got, rec = a.read()
            if got:
                self._on_ack(slot, rec, now)
        if got_any:
            self._next_ack_read = now + self._ack_batch()

    def _last_chance_ack(self, slot, now):
        """Read the worker's ack channel once more right before killing it."""
        if slot.ack is not None:
            got, rec = slot.ack.read()
            if got:
                self._on_ack(slot, rec, now)
                return True
        return False

    def _on_ack(self, slot, rec, now):
        slot.acks += 1
        slot.last_ack_at = now
        if slot.first_ack_at is None:
            slot.first_ack_at = now
        if rec is None:
            return
        slot.worker_state = rec.state
        slot.info = rec.info
        slot.heartbeat_age = rec.heartbeat_age
        slot.heartbeat_at = now
        if slot.state == S.STOPPING:
            return
        was_ready = slot.ready
        slot.ready = rec.ready
        if rec.ready and not was_ready:
            slot.ready_since = now
            self._emit("ready", slot=slot.name, pid=slot.pid, state=rec.state)
        elif not rec.ready:
            slot.ready_since = None
            slot.stable = False
        want = S.RUNNING if rec.ready else S.DEGRADED
        if slot.state != want:
            self._set_state(slot, want, rec.state)

    # ================================================================== 4. kill the silent
    def _murder_silent(self):
        now = self.clock()
        cfg = self.config
        for slot in list(self._slots.values()):
            if slot.state == S.STOPPING:
                self._escalate(slot, now)
                continue
            if slot.state not in LIVE:
                continue
            if slot.first_ack_at is None:
                silent = now - slot.started_at
                if silent >= cfg.effective_boot_timeout and not self._last_chance_ack(slot, now):
                    self._start_kill(slot, reasons.BOOT_TIMEOUT, silent, now)
                continue
            silent = now - slot.last_ack_at
            if silent >= cfg.ack_deadline and not self._last_chance_ack(slot, now):
                self._start_kill(slot, reasons.ACK_TIMEOUT, silent, now)
                continue
            hb = self._heartbeat_deadline(slot)
            if hb is not None and now >= hb:
                self._start_kill(slot, reasons.HEARTBEAT_STALE, silent, now,
                                 heartbeat_age=slot.heartbeat_age)

    def _start_kill(self, slot, reason, silent, now, heartbeat_age=None):
        wchan = procinfo.wchan(slot.pid)
        pstate = procinfo.proc_state(slot.pid)
        log.error(_kv("kill", pool=self.config.name, slot=slot.name, pid=slot.pid, reason=reason,
                      silent_for=silent, heartbeat_age=heartbeat_age, wchan=wchan, proc_state=pstate,
                      worker_state=slot.worker_state))
        self._emit("kill", slot=slot.name, pid=slot.pid, reason=reason, silent_for=silent,
                   heartbeat_age=heartbeat_age, wchan=wchan)
        slot.plan = StopPlan("kill", reason, now)
        self._set_state(slot, S.STOPPING, reason)
        self._escalate(slot, now)

    def _begin_stop(self, slot, reason, fast=False):
        """Supervisor-initiated stop (stop, restart, reload, recycle): never counted as a crash."""
        now = self.clock()
        if slot.state == S.STOPPING:
            if fast and slot.plan.kind != "fast" and slot.plan.stage < 3:
                slot.plan.next_at = now        # escalate what is in progress to SIGKILL now
                slot.plan.stage = 2
                self._escalate(slot, now)
            return
        slot.plan = StopPlan("fast" if fast else "graceful", reason, now)
        log.info(_kv("stopping", pool=self.config.name, slot=slot.name, pid=slot.pid, reason=reason,
                     fast=fast))
        self._set_state(slot, S.STOPPING, reason)
        self._escalate(slot, now)

    def _escalate(self, slot, now):
        """Kill escalation by elapsed time. kill: dump -> TERM (group) -> KILL (group);
        graceful: TERM (worker) -> KILL (group) after shutdown_timeout; fast: KILL at once."""
        p = slot.plan
        cfg = self.config
        while p.stage < 3 and now >= p.next_at:
            if p.kind == "fast":
                p.stage = 2
            if p.stage == 0:
                if p.kind == "kill":
                    self._signal(slot, DUMP_SIGNAL)
                    self._signal(slot, signal.SIGCONT)   # a stopped worker must run to dump
                    p.next_at = now + DUMP_GRACE
                    p.stage = 1
                else:
                    self._signal(slot, signal.SIGTERM)
                    self._signal(slot, signal.SIGCONT)
                    p.next_at = now + cfg.shutdown_timeout
                    p.stage = 2
            elif p.stage == 1:
                self._signal_group(slot, signal.SIGTERM)
                self._signal_group(slot, signal.SIGCONT)
                p.next_at = now + cfg.kill_timeout
                p.stage = 2
            elif p.stage == 2:
                if p.kind == "graceful":
                    log.warning(_kv("stop_timeout", pool=cfg.name, slot=slot.name, pid=slot.pid,
                                    waited=now - p.started, wchan=procinfo.wchan(slot.pid)))
                slot.sent_sigkill = True
                self._signal_group(slot, signal.SIGKILL)
                p.stage = 3
                p.next_at = now + 5.0

    def _signal(self, slot, sig):
        if slot.pid is None:
            return
        try:
            os.kill(slot.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_group(self, slot, sig):
        if slot.pid is None:
            return
        try:
            os.killpg(slot.pid, sig)
        except (ProcessLookupError, PermissionError):
            # the worker may not have called setpgid yet: signal it directly
            self._signal(slot, sig)
        if sig == signal.SIGKILL:
            self._signal(slot, sig)

    # ================================================================== 5. memory and age
    def _check_memory_and_age(self):
        now = self.clock()
        cfg = self.config
        for slot in list(self._slots.values()):
            if slot.state not in (S.RUNNING, S.DEGRADED):
                continue
            if slot.ready and not slot.stable and slot.policy.is_stable(slot.ready_since, now):
                slot.stable = True
                slot.policy.stable()
            if cfg.memory_soft_limit and now >= slot.next_mem_check:
                slot.next_mem_check = now + min(1.0, cfg.ack_interval)
                slot.rss = procinfo.rss(slot.pid)
                if slot.rss is not None and slot.rss > cfg.memory_soft_limit:
                    log.warning(_kv("recycle", pool=cfg.name, slot=slot.name, pid=slot.pid,
                                    rss=slot.rss, limit=cfg.memory_soft_limit))
                    self._emit("recycle", slot=slot.name, pid=slot.pid, reason=reasons.RECYCLED_MEMORY,
                               rss=slot.rss)
                    self._begin_stop(slot, reasons.RECYCLED_MEMORY)
                    continue
            if slot.recycle_at is not None and now >= slot.recycle_at:
                log.info(_kv("recycle", pool=cfg.name, slot=slot.name, pid=slot.pid, reason="max age"))
                self._emit("recycle", slot=slot.name, pid=slot.pid, reason=reasons.RECYCLED_AGE)
                self._begin_stop(slot, reasons.RECYCLED_AGE)

    # ================================================================== 6. spawn
    def _spawn_due(self):
        """Fork the slots whose start is due, at most SPAWN_BATCH per pass: a fork costs a few
        ms, and a pool of hundreds starting at once must not hold the loop (acks, control)
        for a second; the slots still due keep the next wait at zero."""
        if self._stopping:
            return
        now = self.clock()
        spawned = 0
        for slot in list(self._slots.values()):
            if spawned >= SPAWN_BATCH:
                return
            if slot.removed or now < slot.next_start_at:
                continue
            if slot.state == S.FATAL:
                log.info(_kv("fatal_retry", pool=self.config.name, slot=slot.name))
                slot.policy.on_fatal_retry()
            elif slot.state not in (S.BACKOFF, S.STOPPED):
                continue
            self._spawn(slot, now)
            spawned += 1

    def _internal_fds(self, exclude_slot):
        """fds and sockets of the supervisor that a new worker must not keep."""
        fds = [self._wake_r, self._wake_w]
        if self._pidfile is not None and self._pidfile.fd is not None:
            fds.append(self._pidfile.fd)
        for slot in self._slots.values():
            if slot is exclude_slot or slot.proc is None:
                continue
            if slot.ack is not None and slot.ack.fd is not None:
                fds.append(slot.ack.fd)
            if slot.lifeline_w is not None:
                fds.append(slot.lifeline_w)
            fds.append(slot.proc.sentinel)
            fin = getattr(getattr(slot.proc, "_popen", None), "finalizer", None)
            # multiprocess's fork Popen keeps (sentinel, parent_w) for the child's parent_sentinel;
            # a sibling holding parent_w would keep that sentinel from ever signalling
            fds.extend(fd for fd in (getattr(fin, "_args", None) or ()) if isinstance(fd, int))
        socks = list(self._control.sockets())
        if self._notifier.socket() is not None:
            socks.append(self._notifier.socket())
        return list(dict.fromkeys(fds)), socks

    def _spawn(self, slot, now):
        cfg = self.config
        spec = slot.spec
        reader = lifeline_r = lifeline_w = None
        try:
            if cfg.liveness == "file":
                reader, child_ack_fd = _ack.make_file(self._ack_dir, cfg.name.replace("/", "_"))
            else:
                reader, child_ack_fd = _ack.make_pipe()
            lifeline_r, lifeline_w = os.pipe2(os.O_CLOEXEC)
            close_fds, close_socks = self._internal_fds(slot)
            close_fds.append(lifeline_w)
            if reader.kind == "pipe":
                close_fds.append(reader.fd)
            boot = ChildBoot(spec=spec, config=cfg, ack_kind=reader.kind, ack_fd=child_ack_fd,
                             lifeline_r=lifeline_r, ppid=os.getpid(), close_fds=close_fds,
                             close_socks=close_socks)
            proc = self._mp.Process(target=child_main, args=(boot,), name=f"{cfg.name}:{spec.slot}")
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        except OSError as e:
            log.error(_kv("spawn_failed", pool=cfg.name, slot=spec.slot, error=str(e)))
            for fd in (lifeline_r, lifeline_w):
                if fd is not None:
                    os.close(fd)
            if reader is not None:
                reader.close()
                if reader.kind == "pipe":
                    os.close(child_ack_fd)
            decision, delay = slot.policy.on_crash()
            slot.next_start_at = now + delay
            slot.exit_reasons.append({"reason": f"spawn failed: {e.strerror or e}", "exit": None,
                                      "pid": None, "time": round(time.time(), 3)})
            if slot.state == S.STOPPED:
                self._set_state(slot, S.BACKOFF, "spawn failed")
            return
        os.close(lifeline_r)
        if reader.kind == "pipe":
            os.close(child_ack_fd)
        if slot.spawned:
            slot.restarts += 1
        slot.spawned += 1
        slot._clear_worker()
        slot.proc = proc
        slot.pid = proc.pid
        slot.ack = reader
        slot.lifeline_w = lifeline_w
        slot.started_at = now
        slot.last_ack_at = None
        if cfg.max_age:
            slot.recycle_at = now + jittered(cfg.max_age, 0.1, self.rng)
        log.info(_kv("spawned", pool=cfg.name, slot=spec.slot, pid=proc.pid, restarts=slot.restarts))
        self._emit("spawned", slot=spec.slot, pid=proc.pid, restarts=slot.restarts)
        self._set_state(slot, S.STARTING, "spawned")

    # ================================================================== 7. control
    def _serve_control(self):
        self._control.serve(self._ready, self._handle_request)

    def _handle_request(self, req):
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.status()}
        if cmd == "stop":
            self.stop(fast=bool(req.get("fast", False)))
            return {"ok": True, "stopping": True}
        if cmd == "reload":
            return self.reload()
        if cmd in ("restart", "dump"):
            target = req.get("slot")
            if not isinstance(target, str):
                return {"ok": False, "error": f"{cmd} needs \"slot\": a slot id" +
                        (" or \"all\"" if cmd == "restart" else "")}
            if cmd == "restart":
                return self.restart(target)
            return self.dump(target)
        if not isinstance(cmd, str):
            return {"ok": False, "error": "missing \"cmd\""}
        return {"ok": False, "error": f"unknown cmd {cmd[:40]!r}; known: status, stop, restart, "
                                      f"dump, reload"}

    # ================================================================== 8. report
    def _report(self):
        cfg = self.config
        total = len(self._slots)
        ready = sum(1 for s in self._slots.values() if s.state == S.RUNNING)
        fatal = sum(1 for s in self._slots.values() if s.state == S.FATAL)
        restarts = sum(s.restarts for s in self._slots.values())
        self._check_started()
        title = titles.supervisor_title(cfg.title_prefix, cfg.name, ready, total, restarts, fatal,
                                        self._stopping)
        if title != self._last_title:
            self._last_title = title
            titles.set_title(title)
        line = f"{ready}/{total} ready, {fatal} fatal, {restarts} restarts"
        if line != self._status_line:
            self._status_line = line
            self._notifier.status(line)
        self._notifier.watchdog()
        if total and fatal == total and not self._stopping:
            log.error(_kv("all_fatal", pool=cfg.name, slots=total))
            self._emit("all_fatal", slots=total)
            self._exit_code = ALL_FATAL
            self.stop()

    def _check_started(self):
        if self._state != "starting" or self._stopping:
            return
        if all(s.state == S.FATAL or s.ever_ready for s in self._slots.values()):
            self._state = "running"
            self._notifier.ready()
            log.info(_kv("pool_ready", pool=self.config.name, slots=len(self._slots)))
            self._emit("pool_ready", slots=len(self._slots))

    # ================================================================== state: the one place
    def _set_state(self, slot, new, why=""):
        old = slot.state
        if old == new:
            return
        check_transition(old, new)
        slot.state = new
        slot.state_since = self.clock()
        if new == S.RUNNING:
            slot.ever_ready = True
        # ready / degraded changes are what an operator watches; the rest has its own event line
        lvl = logging.INFO if new in (S.RUNNING, S.DEGRADED) else logging.DEBUG
        log.log(lvl, _kv("state", pool=self.config.name, slot=slot.name, pid=slot.pid, old=old.value,
                         new=new.value, why=why))
        self._emit("state", slot=slot.name, pid=slot.pid, old=old.value, new=new.value, why=why)

    def _emit(self, event, **fields):
        if self._on_event is None:
            return
        ev = {"event": event, "time": self.clock(), "pool": self.config.name}
        ev.update(fields)
        try:
            self._on_event(ev)
        except Exception:
            log.exception(_kv("on_event_failed", event=event))

    # ================================================================== public operations
    def stop(self, fast=False):
        """Begin a graceful (or fast) stop of every worker; run() returns once all are gone."""
        first = not self._stopping
        self._stopping = True
        self._fast = self._fast or fast
        if first:
            self._state = "stopping"
            log.info(_kv("supervisor_stopping", pool=self.config.name, fast=fast))
            self._emit("stopping", fast=fast)
            if self._notifier is not None:
                self._notifier.stopping()
        for slot in list(self._slots.values()):
            if slot.state in LIVE:
                self._begin_stop(slot, reasons.STOPPED, fast=fast)
            elif slot.state != S.STOPPED:
                self._set_state(slot, S.STOPPED, "supervisor stopping")

    def restart(self, target):
        """Gracefully restart one slot or ``"all"`` (not counted as a crash; clears FATAL)."""
        if target == "all":
            names = list(self._slots)
        elif target in self._slots:
            names = [target]
        else:
            return {"ok": False, "error": f"unknown slot {target[:200]!r}"}
        if self._stopping:
            return {"ok": False, "error": "supervisor is stopping"}
        now = self.clock()
        for name in names:
            slot = self._slots[name]
            if slot.removed:
                continue
            slot.policy.reset()
            if slot.state in (S.STARTING, S.RUNNING, S.DEGRADED):
                self._begin_stop(slot, reasons.RESTARTED)
            elif slot.state in (S.BACKOFF, S.FATAL, S.STOPPED):
                slot.next_start_at = now
        log.info(_kv("restart", pool=self.config.name, slots=",".join(names)))
        return {"ok": True, "restarting": names}

    def dump(self, target):
        """Send the faulthandler dump signal to a slot's worker: its stack goes to the log."""
        slot = self._slots.get(target)
        if slot is None:
            return {"ok": False, "error": f"unknown slot {target[:200]!r}"}
        if slot.pid is None or slot.first_ack_at is None:
            return {"ok": False, "error": f"slot {target!r} has no running worker"}
        self._signal(slot, DUMP_SIGNAL)
        log.info(_kv("dump", pool=self.config.name, slot=slot.name, pid=slot.pid))
        self._emit("dump", slot=slot.name, pid=slot.pid)
        return {"ok": True, "pid": slot.pid}

    def reload(self):
        """Call the reload callable and apply the diff: start added slots, gracefully stop removed
        ones, restart changed ones (slot + fingerprint), leave the rest alone."""
        cfg = self.config
        if self._reload_fn is None:
            log.warning(_kv("reload_ignored", pool=cfg.name, reason="no reload callable"))
            return {"ok": False, "error": "reload is not configured"}
        if self._stopping:
            return {"ok": False, "error": "supervisor is stopping"}
        try:
            specs = validate_specs(list(self._reload_fn()))
        except Exception as e:
            log.error(_kv("reload_failed", pool=cfg.name, error=f"{type(e).__name__}: {e}"))
            return {"ok": False, "error": f"reload failed: {type(e).__name__}: {e}"}
        now = self.clock()
        new = collections.OrderedDict((s.slot, s) for s in specs)
        added, removed, changed = [], [], []
        for name, slot in list(self._slots.items()):
            if name in new or slot.removed:
                continue
            removed.append(name)
            slot.removed = True
            slot.pending_spec = None
            if slot.state in LIVE:
                self._begin_stop(slot, reasons.REMOVED)
            else:
                if slot.state != S.STOPPED:
                    self._set_state(slot, S.STOPPED, "removed")
                del self._slots[name]
        for name, spec in new.items():
            slot = self._slots.get(name)
            if slot is None:
                slot = Slot(spec, self._new_policy())
                slot.next_start_at = now
                self._slots[name] = slot
                added.append(name)
                continue
            current = slot.pending_spec or slot.spec
            if slot.removed:                                  # re-added while stopping
                slot.removed = False
                slot.pending_spec = spec
                changed.append(name)
            elif current.fingerprint != spec.fingerprint:
                changed.append(name)
                if slot.state in LIVE:
                    slot.pending_spec = spec
                    if slot.state != S.STOPPING:
                        self._begin_stop(slot, reasons.RELOADED)
                else:
                    slot.spec = spec
                    slot.policy = self._new_policy()
                    slot.next_start_at = now
            else:
                slot.spec = spec if slot.pending_spec is None else slot.spec
        # keep the order of the new spec list; slots still stopping go last
        order = list(new) + [n for n in self._slots if n not in new]
        self._slots = collections.OrderedDict((n, self._slots[n]) for n in order if n in self._slots)
        log.info(_kv("reload", pool=cfg.name, added=",".join(added), removed=",".join(removed),
                     changed=",".join(changed)))
        self._emit("reload", added=added, removed=removed, changed=changed)
        return {"ok": True, "added": added, "removed": removed, "changed": changed}

    def status(self):
        """A JSON-able snapshot: no secrets, only slot ids, states and numbers."""
        now = self.clock()
        cfg = self.config
        slots = []
        ready = 0
        for s in self._slots.values():
            ready += s.state == S.RUNNING
            rss = procinfo.rss(s.pid) if s.pid is not None else None
            hb = None
            if s.heartbeat_age is not None and s.heartbeat_at is not None:
                hb = round(s.heartbeat_age + (now - s.heartbeat_at), 3)
            slots.append({
                "slot": s.name,
                "state": s.state.value,
                "worker_state": s.worker_state,
                "ready": s.state == S.RUNNING,
                "pid": s.pid,
                "restarts": s.restarts,
                "crashes": s.crashes,
                "uptime": round(now - s.started_at, 3) if s.started_at is not None else None,
                "last_ack_age": round(now - s.last_ack_at, 3) if s.last_ack_at is not None else None,
                "last_heartbeat_age": hb,
                "rss": rss,
                "next_start_in": (round(max(0.0, s.next_start_at - now), 3)
                                  if s.state in (S.BACKOFF, S.FATAL) else None),
                "exit_reasons": list(s.exit_reasons),
                "info": s.info,
            })
        return {
            "supervisor": {
                "name": cfg.name,
                "pid": os.getpid(),
                "state": self._state,
                "uptime": round(now - self._started_at, 3) if self._started_at is not None else 0.0,
                "slots": len(slots),
                "ready": ready,
                "fatal": sum(1 for s in self._slots.values() if s.state == S.FATAL),
                "liveness": cfg.liveness,
                "rss": procinfo.rss(os.getpid()),
            },
            "slots": slots,
        }
