"""`pool.Pool`: the same supervisor, started as a child of the calling script.

    with pool.Pool("ws://localhost:4000/socket", topics=["room:lobby"]) as p:
        p.push("room:lobby", "new_msg", {"body": "hi"})

The supervisor runs in a fresh interpreter (multiprocess's spawn context: never a fork of the
caller, which may hold threads and locks; dill carries closures such as handlers). It receives
SIGTERM if the calling thread dies (PR_SET_PDEATHSIG), and `close()` (or leaving the ``with``
block, or interpreter exit) stops it and removes the private run_dir.
"""
import atexit
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time

import multiprocess

from .client import Client
from .errors import PoolError


MAIN_GUARD_HINT = (
    "pool.Pool() must not run when its module is imported: the supervisor starts in a fresh "
    "interpreter that imports your script's main module again. Put the code that creates the "
    "Pool under `if __name__ == \"__main__\":`.")


def _supervise(cfg, parent_pid):
    from supervisor.child import set_pdeathsig
    from . import logs
    from .runner import run_supervisor
    set_pdeathsig(signal.SIGTERM, expected_ppid=parent_pid)
    logs.configure(cfg.log_level, cfg.log_file)
    sys.exit(run_supervisor(cfg))


class Pool:
    def __init__(self, url=None, *, topics=(), config=None, run_dir=None, start_timeout=30.0,
                 timeout=10.0, retry_lost=0, **settings):
        from .config import load_config
        if getattr(multiprocess.current_process(), "_inheriting", False):
            # we are the supervisor's fresh interpreter re-importing the user's script
            raise PoolError(MAIN_GUARD_HINT)
        self._tmp = None
        if run_dir is None:
            self._tmp = run_dir = tempfile.mkdtemp(prefix="pool-")
        overrides = dict(settings, run_dir=run_dir)
        if url is not None:
            overrides["url"] = url
        if topics:
            overrides["topics"] = list(topics)
        try:
            if isinstance(config, dict):
                self.config = load_config(data=config, **overrides)
            else:
                self.config = load_config(path=config, **overrides)
        except Exception:
            self._remove_tmp()
            raise
        if "log_level" not in self.config.explicit:  # a library stays quiet unless asked
            self.config = dataclasses.replace(self.config, log_level="warning")
        self.start_timeout = start_timeout
        self.client = Client(self.config.run_dir, timeout=timeout, retry_lost=retry_lost)
        self._proc = None
        self.start()

    def start(self):
        ctx = multiprocess.get_context("spawn")
        self._proc = ctx.Process(target=_supervise, args=(self.config, os.getpid()),
                                 name=f"pool supervisor {self.config.name}")
        self._proc.start()
        atexit.register(self.close)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self.close()
                raise PoolError(f"the pool's supervisor exited at start with code {code} (see its "
                                f"log on stderr); if this is a script: {MAIN_GUARD_HINT}")
            if self.client.wait_joined(timeout=0.1):
                return
        # not all joined in time: the pool keeps trying; pushes wait in the workers' buffers

    @property
    def pid(self):
        return self._proc.pid if self._proc is not None else None

    def push(self, topic, event, payload=None, timeout=None):
        return self.client.push(topic, event, payload, timeout)

    def listen(self, topic, timeout=None):
        return self.client.listen(topic, timeout)

    def status(self):
        return self.client.status()

    def wait_joined(self, timeout=30.0):
        return self.client.wait_joined(timeout)

    def close(self, timeout=None):
        """Stop the supervisor and its workers; leaves no process or file behind."""
        proc, self._proc = self._proc, None
        atexit.unregister(self.close)
        if proc is not None:
            if proc.is_alive():
                try:
                    self.client.stop(timeout=2.0)
                except PoolError:
                    proc.terminate()
            cfg = self.config
            proc.join(timeout if timeout is not None else
                      cfg.supervisor_config().shutdown_timeout + cfg.supervisor_config().kill_timeout + 2)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.client.close()
        self._remove_tmp()

    def _remove_tmp(self):
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
