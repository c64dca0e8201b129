"""``python manage.py pool COMMAND``: the `pool` command, configured by ``settings.POOL``.

The subcommands, their arguments and their output are pool.cli's (docs/cli.md); only where the
configuration comes from differs: ``settings.POOL`` unless ``-c FILE`` names a pool.toml.
``start`` runs the supervisor in this process after Django is set up, so the workers it forks
inherit a loaded app registry and their handlers can use the ORM; it closes every database
connection first, so no worker shares a connection with its parent or siblings.

Exit codes are pool.cli's (e.g. push: 3 error reply, 4 timeout, 5 rejected, 6 worker lost,
7 not running). Put Django's own options (--settings, --skip-checks) before COMMAND.
"""
import argparse
import contextlib
import os
import sys

from django.core.management.base import BaseCommand, CommandError

from pool import cli as pool_cli
from pool.errors import ConfigError, NotRunning, PoolError

COMMANDS = ("start", "status", "stop", "reload", "push", "listen", "check-config")


def _pool_subparsers():
    """pool.cli's subcommand parsers by name (the single source of their arguments)."""
    parser = pool_cli.build_parser()
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    raise RuntimeError("pool.cli.build_parser() has no subcommands")  # pragma: no cover


class Command(BaseCommand):
    help = ("Run or talk to the Phoenix pool configured by settings.POOL: "
            + ", ".join(COMMANDS) + ". See docs/django.md.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="pool_command", metavar="COMMAND")
        templates = _pool_subparsers()
        for name in COMMANDS:
            template = templates.get(name)
            if template is None:  # pragma: no cover - pool.cli dropped a command
                continue
            p = sub.add_parser(name, parents=[template], add_help=False,
                               conflict_handler="resolve", help=template.description,
                               description=template.description)
            p.add_argument("-c", "--config", metavar="FILE",
                           help="a pool.toml to use instead of settings.POOL")

    def handle(self, *args, **options):
        name = options.get("pool_command")
        if not name:
            self.print_help("manage.py", "pool")
            raise CommandError(f"give a command: {', '.join(COMMANDS)}")
        ns = argparse.Namespace(**options)
        out = getattr(self.stdout, "_out", sys.stdout)
        err = getattr(self.stderr, "_out", sys.stderr)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = self.run_pool_command(name, ns)
            sys.stdout.flush()
        if code:
            if self._called_from_command_line:
                sys.exit(code)
            raise CommandError(f"pool {name} exited with code {code}", returncode=code)

    # -- the same outcomes and exit codes as pool.cli.main ---------------------------------

    def run_pool_command(self, name, args):
        try:
            if name == "start":
                return self.start(args, self.config(args))
            if name == "check-config":
                return self.check_config(args, self.config(args))
            if not getattr(args, "run_dir", None):
                args.run_dir = self.config(args).run_dir
                if not os.path.isdir(args.run_dir):
                    reason = (f"run_dir {args.run_dir} does not exist; start the pool with "
                              f"'manage.py pool start'")
                    if name == "status" and getattr(args, "check", False):
                        print(f"pool: not running ({reason})", file=sys.stderr)
                        return pool_cli.EXIT_USAGE  # as pool status --check: 2 = not running
                    raise NotRunning(reason)
            args.config = None
            return args.func(args)
        except (ConfigError, pool_cli.UsageError) as exc:
            print(f"pool: {exc}", file=sys.stderr)
            return pool_cli.EXIT_USAGE
        except NotRunning as exc:
            print(f"pool: not running: {exc}", file=sys.stderr)
            return pool_cli.EXIT_NOT_RUNNING
        except KeyboardInterrupt:
            return 130
        except PoolError as exc:
            print(f"pool: {exc}", file=sys.stderr)
            return pool_cli.EXIT_FAIL

    @staticmethod
    def config(args):
        if getattr(args, "config", None):
            from pool.config import load_config
            return load_config(path=args.config)
        from pool.contrib.django import conf
        return conf.load()

    def start(self, args, cfg):
        import logging

        from django.db import connections
        from supervisor.errors import AlreadyRunning

        from pool import logs
        from pool.runner import run_supervisor
        from pool.worker import resolve_handler

        logs.configure(getattr(args, "log_level", None) or cfg.log_level,
                       getattr(args, "log_file", None) or cfg.log_file)
        for ch in cfg.channels:
            # Import handler modules here, before the fork, so every worker starts warm. One that
            # fails is left to its worker: a boot failure is a crash of that channel only.
            if isinstance(ch.handler, str):
                try:
                    resolve_handler(ch.handler)
                except Exception as exc:
                    logging.getLogger("pool.django").error(
                        "handler_import_failed topic=%s handler=%s error=%s", ch.topic,
                        ch.handler, f"{type(exc).__name__}: {exc}")
        # Workers are forked from this process: a database connection open here would be shared
        # by all of them. Close every one; each worker opens its own on first use.
        connections.close_all()
        try:
            return run_supervisor(cfg, config_path=cfg.source)
        except AlreadyRunning as exc:
            print(f"pool: {exc}", file=sys.stderr)
            return pool_cli.EXIT_FAIL

    @staticmethod
    def check_config(args, cfg):
        sup = cfg.supervisor_config()
        print(f"{cfg.source or 'settings.POOL'}: ok — pool {cfg.name!r}, {len(cfg.channels)} "
              f"channel(s), run_dir {cfg.run_dir}, ack_deadline {sup.ack_deadline:g}s, "
              f"liveness {sup.liveness}")
        return pool_cli.EXIT_OK
