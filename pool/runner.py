"""Run the watchdog for a PoolConfig in this process: shared by `pool start` and `pool.Pool`."""
from supervisor import Supervisor

from . import worker  # noqa: F401  imported before any fork, so workers start warm


def run_supervisor(cfg, config_path=None):
    """Block until the pool is stopped; returns the supervisor's exit code.

    With ``config_path``, SIGHUP and ``pool reload`` re-read that file: channels added or
    removed are started or stopped, changed ones restarted, the others left alone."""
    def reload_specs():
        from .config import load_config
        return load_config(path=config_path, run_dir=cfg.run_dir).worker_specs()
    return Supervisor(cfg.supervisor_config(), cfg.worker_specs(),
                      reload=reload_specs if config_path is not None else None).run()
