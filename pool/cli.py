"""The `pool` command: start, status, stop, reload, push, listen, check-config, demo.

Exit codes (docs/cli.md): 0 success; 1 runtime failure (already running, unexpected error);
2 bad config or bad command-line input (nothing was started); push outcomes: 3 error reply,
4 timeout, 5 rejected, 6 worker lost, 7 pool not running. `status --check`: 0 all joined,
1 some channel degraded or FATAL, 2 not running. `start` returns the supervisor's code
(0 stopped, 8 every channel FATAL).
"""
import argparse
import json
import os
import sys
import time

from .errors import (ConfigError, NotRunning, PoolError, PushTimeout, Rejected, ReplyError,
                     WorkerLost)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_ERROR_REPLY, EXIT_TIMEOUT, EXIT_REJECTED, EXIT_WORKER_LOST, EXIT_NOT_RUNNING = 3, 4, 5, 6, 7


class UsageError(Exception):
    pass


def _config(args):
    # embedders (the Django command) set args.load_config to build the config their own way
    loader = getattr(args, "load_config", None)
    if loader is not None:
        return loader(args)
    from .config import load_config
    path = args.config or os.environ.get("POOL_CONFIG")
    if not path:
        raise UsageError("no config file: pass -c FILE (or set POOL_CONFIG)")
    return load_config(path=path)


def _client(args):
    from .client import Client
    if getattr(args, "run_dir", None):
        return Client(args.run_dir)
    return Client(_config(args))


def cmd_start(args):
    from supervisor.errors import AlreadyRunning
    from . import logs
    from .runner import run_supervisor
    cfg = _config(args)
    logs.configure(args.log_level or cfg.log_level, args.log_file or cfg.log_file)
    before_fork = getattr(args, "before_fork", None)  # e.g. Django: close DB connections
    if before_fork is None and os.environ.get("DJANGO_SETTINGS_MODULE"):
        before_fork = _django_prepare()
    if before_fork is not None:
        before_fork(cfg)
    try:
        return run_supervisor(cfg, config_path=cfg.source)
    except AlreadyRunning as exc:
        print(f"pool: {exc}", file=sys.stderr)
        return EXIT_FAIL


def _django_prepare():
    """Under DJANGO_SETTINGS_MODULE, `pool start` sets Django up before forking the workers,
    as `manage.py pool start` does, so "module:function" handlers can use the ORM."""
    try:
        from .contrib.django import prepare_workers
        import django  # noqa: F401
    except ImportError:
        print("pool: DJANGO_SETTINGS_MODULE is set but Django is not installed; "
              "starting without Django", file=sys.stderr)
        return None
    return prepare_workers


def _age(value):
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def _mib(value):
    return "-" if value is None else f"{value / 2**20:.1f}M"


def format_status(status):
    pool = status["pool"]
    lines = [f"pool {pool['name']}  pid {pool['pid']}  {pool['state']}  up {_age(pool['uptime'])}  "
             f"{pool['joined']}/{pool['channels']} joined  {pool.get('fatal', 0)} fatal"]
    rows = [("TOPIC", "STATE", "WORKER", "PID", "UPTIME", "RESTARTS", "ACK", "HEARTBEAT", "RSS",
             "LAST EXIT")]
    for ch in status["channels"]:
        reasons = ch.get("exit_reasons") or []
        last = reasons[-1] if reasons else ""
        if isinstance(last, dict):
            last = last.get("reason", "")
        rows.append((ch["topic"], ch["state"], ch.get("worker_state") or "-", str(ch.get("pid") or "-"),
                     _age(ch.get("uptime")), str(ch.get("restarts", 0)), _age(ch.get("last_ack_age")),
                     _age(ch.get("last_heartbeat_age")), _mib(ch.get("rss")), str(last)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def health(status):
    channels = status["channels"]
    return EXIT_OK if channels and all(c["state"] == "RUNNING" for c in channels) else EXIT_FAIL


def cmd_status(args):
    while True:
        try:
            status = _client(args).status()
        except NotRunning as exc:
            if args.check:
                print(f"pool: not running ({exc})", file=sys.stderr)
                return EXIT_USAGE  # --check: 2 means not running
            raise
        if args.json:
            print(json.dumps(status, indent=None if args.watch else 2), flush=True)
        else:
            if args.watch:
                print("\x1b[2J\x1b[H", end="")
            print(format_status(status), flush=True)
        if not args.watch:
            return health(status) if args.check else EXIT_OK
        time.sleep(args.interval)


def cmd_stop(args):
    _client(args).stop()
    print("pool: stop requested")
    return EXIT_OK


def cmd_reload(args):
    reply = _client(args).reload()
    print(json.dumps({k: v for k, v in reply.items() if k != "ok"}))
    return EXIT_OK


def cmd_push(args):
    try:
        payload = json.loads(args.payload) if args.payload is not None else {}
    except ValueError as exc:
        raise UsageError(f"PAYLOAD is not valid JSON: {exc}") from None
    client = _client(args)
    try:
        reply = client.push(args.topic, args.event, payload, timeout=args.timeout)
    except ReplyError as exc:
        print(json.dumps({"outcome": "error", "response": exc.response}))
        return EXIT_ERROR_REPLY
    except PushTimeout as exc:
        print(json.dumps({"outcome": "timeout", "reason": str(exc)}))
        return EXIT_TIMEOUT
    except Rejected as exc:
        print(json.dumps({"outcome": "rejected", "reason": str(exc)}))
        return EXIT_REJECTED
    except WorkerLost as exc:
        print(json.dumps({"outcome": "worker_lost", "reason": str(exc)}))
        return EXIT_WORKER_LOST
    print(json.dumps(reply))
    return EXIT_OK


def cmd_listen(args):
    client = _client(args)
    count = 0
    for msg in client.listen(args.topic, timeout=args.timeout):
        print(json.dumps({"topic": msg.topic, "event": msg.event, "payload": msg.payload,
                          "ref": msg.ref, "join_ref": msg.join_ref}), flush=True)
        count += 1
        if args.count and count >= args.count:
            break
    return EXIT_OK


def cmd_check_config(args):
    cfg = _config(args)
    sup = cfg.supervisor_config()
    label = cfg.source or getattr(args, "config_label", "config")
    print(f"{label}: ok — pool {cfg.name!r}, {len(cfg.channels)} channel(s), run_dir {cfg.run_dir}, "
          f"ack_deadline {sup.ack_deadline:g}s, liveness {sup.liveness}")
    return EXIT_OK


def cmd_demo(args):
    try:
        import wsproto  # noqa: F401  the demo's Phoenix test server is built on it
    except ImportError:
        raise UsageError("the demo needs the test server's dependency: "
                         "pip install 'phoenix-pool[testserver]'") from None
    from .demo import main as demo_main
    return demo_main(forever=args.forever, channels=args.channels)


def _version():
    try:
        from importlib.metadata import version
        return version("phoenix-pool")
    except Exception:  # not installed (running from a checkout)
        return "unknown"


def build_parser():
    parser = argparse.ArgumentParser(prog="pool", description="A supervised process pool of "
                                     "Phoenix Channels connections.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help, target=True):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("-c", "--config", metavar="FILE", help="pool.toml (default: $POOL_CONFIG)")
        if target:
            p.add_argument("--run-dir", help="talk to the pool in this run_dir instead of reading -c")
        return p

    p = add("start", cmd_start, "run the pool in the foreground", target=False)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-file", help="append logs here (reopened on SIGUSR1)")
    p = add("status", cmd_status, "show the pool's channels")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--check", action="store_true",
                   help="exit 0 if every channel is joined, 1 if not, 2 if the pool is not running")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="--watch refresh interval (s)")
    add("stop", cmd_stop, "stop the pool gracefully")
    add("reload", cmd_reload, "re-read the config: add, remove and restart changed channels")
    p = add("push", cmd_push, "push one message and print the reply")
    p.add_argument("topic")
    p.add_argument("event")
    p.add_argument("payload", nargs="?", help="JSON payload (default {})")
    p.add_argument("--timeout", type=float, default=10.0)
    p = add("listen", cmd_listen, "print a channel's inbound messages as JSON lines")
    p.add_argument("topic")
    p.add_argument("--count", type=int, default=0, help="stop after N messages")
    p.add_argument("--timeout", type=float, default=None, help="stop after S seconds without one")
    add("check-config", cmd_check_config, "validate the config file and exit", target=False)
    p = sub.add_parser("demo", help="run the demo: a local Phoenix server, a pool, faults healed")
    p.set_defaults(func=cmd_demo)
    p.add_argument("--forever", action="store_true", help="keep running until Ctrl-C")
    p.add_argument("--channels", type=int, default=8)
    return parser


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(args)


def run_command(args):
    """Run a parsed command; errors become a message on stderr and the documented exit code."""
    try:
        return args.func(args)
    except (ConfigError, UsageError) as exc:
        print(f"pool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotRunning as exc:
        print(f"pool: not running: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    except KeyboardInterrupt:
        return 130
    except PoolError as exc:
        print(f"pool: {exc}", file=sys.stderr)
        return EXIT_FAIL
