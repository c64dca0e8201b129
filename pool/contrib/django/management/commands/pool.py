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
import sys

from django.core.management.base import BaseCommand, CommandError

from pool import cli as pool_cli
from pool.contrib.django import prepare_workers

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
        """The `pool` CLI's own command functions, fed the config from the Django settings."""
        args.load_config = self.config
        args.before_fork = prepare_workers
        args.config_label = "settings.POOL"
        return pool_cli.run_command(args)

    @staticmethod
    def config(args):
        if getattr(args, "config", None):
            from pool.config import load_config
            return load_config(path=args.config)
        from pool.contrib.django import conf
        return conf.load()
