"""The watchdog: spawns, watches, kills and respawns worker processes. Knows nothing of Phoenix.

The seam::

    from supervisor import Supervisor, SupervisorConfig, WorkerSpec, WorkerContext, exitcodes
    from supervisor.control import request      # client side of the control socket
    from supervisor.child import set_pdeathsig  # for a process that runs the supervisor as a child

    sup = Supervisor(SupervisorConfig(run_dir="/run/pool"),
                     [WorkerSpec(slot="room:lobby", target=my_target, fingerprint="v1")],
                     reload=None, on_event=None)
    code = sup.run()   # blocks; 0 after a stop, exitcodes.ALL_FATAL when every slot is FATAL

A target is any ``callable(ctx, *args, **kwargs)`` that honours the **liveness contract**, written
out in full on :class:`WorkerContext` (``supervisor/child.py``). In short:

* ack from the worker's own loop (never a thread) at least every ``ctx.ack_interval`` seconds:
  ``ctx.ack(state, ready=..., heartbeat_age=..., info=...)``; ``ack`` never blocks;
* ``ready`` is readiness (e.g. joined), not liveness: an acking, not-ready worker is *degraded*,
  reported but never killed for it;
* include ``ctx.wait_fds()`` in every select/poll; when one is readable check
  ``ctx.stop_requested`` (finish within ``ctx.shutdown_timeout`` and return) and
  ``ctx.parent_alive()`` (exit with ``exitcodes.LOST_PARENT`` when False);
* exit codes are an interface (``supervisor.exitcodes``): returning = 0, ``SystemExit(RECYCLE)``
  asks for a voluntary replacement, a MemoryError exits with MEMORY, an exception before the first
  ack is BOOT_FAILURE, after it UNEXPECTED.

A worker that stops acking for ``ack_deadline`` (or never acks within ``boot_timeout``), or that
claims ``ready`` while its ``heartbeat_age`` exceeds ``heartbeat_limit``, is wedged: its stack is
dumped to the log (faulthandler, SIGUSR2), it gets SIGTERM on its process group and SIGKILL after
``kill_timeout``, and is respawned with backoff. See docs/operations.md.

This package never imports ``pool``; the import name ``supervisor`` is also supervisord's.
"""

from . import exitcodes
from .child import WorkerContext
from .config import SupervisorConfig, WorkerSpec
from .core import Supervisor
from .errors import (AlreadyRunning, ConfigError, ControlError, SupervisorError)
from .states import SlotState

__all__ = [
    "Supervisor", "SupervisorConfig", "WorkerSpec", "WorkerContext", "SlotState", "exitcodes",
    "SupervisorError", "ConfigError", "AlreadyRunning", "ControlError",
]
