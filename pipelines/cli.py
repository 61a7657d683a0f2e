"""``taptouch-sync``: the project's command line.

Subcommands are registered in :data:`COMMANDS`; adding one is a function taking the parsed
``args`` and returning an exit code, an optional function adding its arguments, and one line::

    def _demo(args: argparse.Namespace) -> int: ...
    COMMANDS["demo"] = Command(_demo, "run the pipeline against the sandbox", _demo_arguments)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from typing import Callable, NamedTuple, Optional, Sequence

import psycopg

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class Command(NamedTuple):
    run: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None


def _database_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL; default $TAPTOUCH_DATABASE_URL, else the embedded PostgreSQL",
    )


# --- migrate ---------------------------------------------------------------------------------


def _migrate(args: argparse.Namespace) -> int:
    from pipelines.warehouse.db import redact_url, resolve_database_url
    from pipelines.warehouse.migrations import migrate

    url = resolve_database_url(args.database_url)
    applied = migrate(url)
    if applied:
        print(f"Applied {len(applied)} migration(s) to {redact_url(url)}:")
        for name in applied:
            print(f"  {name}")
    else:
        print(f"{redact_url(url)} is up to date.")
    return EXIT_OK


# --- db-url ----------------------------------------------------------------------------------


def _db_url_arguments(parser: argparse.ArgumentParser) -> None:
    _database_url_argument(parser)
    parser.add_argument(
        "--raw",
        action="store_true",
        help="print only the URL, password included (for scripts: psql \"$(taptouch-sync db-url --raw)\")",
    )


def _db_url(args: argparse.Namespace) -> int:
    from pipelines.warehouse.db import redact_url, resolve_database_url

    url = resolve_database_url(args.database_url)
    if args.raw:
        print(url)
        return EXIT_OK
    shown = redact_url(url)
    print(shown)
    print(f'Open it with: {_psql_executable()} "{shown}"')
    if shown != url:
        print("(password hidden; `taptouch-sync db-url --raw` prints the full URL)")
    return EXIT_OK


def _psql_executable() -> str:
    """``psql`` when it is on PATH, else the one shipped inside pgserver."""
    if shutil.which("psql"):
        return "psql"
    try:
        from pgserver._commands import POSTGRES_BIN_PATH
    except ImportError:  # pragma: no cover - pgserver is a dependency
        return "psql"
    bundled = POSTGRES_BIN_PATH / "psql"
    return str(bundled) if bundled.exists() else "psql"


# --- demo / ui --------------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, default=7, help="how many daily order partitions to load (default 7)")


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(days=args.days)


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sandbox", action="store_true",
                        help="serve the sandbox API and point TAPTOUCH_* at it (the demo's data)")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--host", default="127.0.0.1")


def _ui(args: argparse.Namespace) -> int:
    from pipelines.demo import run_ui

    return run_ui(sandbox=args.sandbox, port=args.port, host=args.host)


COMMANDS: dict[str, Command] = {
    "demo": Command(_demo, "run the whole pipeline on the sandbox API and the embedded PostgreSQL", _demo_arguments),
    "ui": Command(_ui, "open the Dagster UI (dagster dev) on the local instance", _ui_arguments),
    "migrate": Command(_migrate, "apply pending database migrations", _database_url_argument),
    "db-url": Command(_db_url, "print the database URL and how to open psql on it", _db_url_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taptouch-sync",
        description="Keep a Taptouch merchant's data in Postgres.",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = subparsers.add_parser(name, help=command.help, description=command.help)
        if command.add_arguments is not None:
            command.add_arguments(sub)
        sub.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``taptouch-sync``. Returns (and, as a script, exits with) the exit code:
    0 success, 1 a failure (e.g. a migration failed), 2 a configuration or usage error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    for noisy in ("pgserver", "httpx", "alembic"):  # their INFO lines are debugging noise here
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from pipelines.warehouse.db import WarehouseConfigError
    from pipelines.warehouse.migrations import MigrationError

    try:
        return args._run(args)
    except WarehouseConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except MigrationError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except psycopg.OperationalError as err:
        print(f"error: cannot reach the database: {str(err).strip()}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
