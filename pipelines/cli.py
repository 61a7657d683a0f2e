"""``taptouch-sync``: the project's command line.

Subcommands are registered in :data:`COMMANDS`; adding one is a function taking the parsed
``args`` and returning an exit code, an optional function adding its arguments, and one line::

    def _demo(args: argparse.Namespace) -> int: ...
    COMMANDS["demo"] = Command(_demo, "run the pipeline against the sandbox", _demo_arguments)
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple, NoReturn

import psycopg

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


class Command(NamedTuple):
    run: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _bounded(kind: type, lo: float, hi: float | None = None, *, what: str = "") -> Callable[[str], float]:
    """An argparse ``type``: ``kind`` (int or float) in [lo, hi]; a bad value is a usage error (exit 2)
    that says what is allowed, never a failure deep inside the command."""
    allowed = what or (f"from {lo:g} to {hi:g}" if hi is not None else f"at least {lo:g}")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a{'n integer' if kind is int else ' number'}: give one {allowed}"
            ) from None
        if value != value or not lo <= value <= (hi if hi is not None else float("inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is out of range: give one {allowed}")
        return value

    return parse


def _url_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "is empty: give a postgresql:// URL, or leave --database-url out to use "
            "TAPTOUCH_DATABASE_URL (else the embedded PostgreSQL)"
        )
    return text.strip()


def _database_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        type=_url_text,
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
        help='print only the URL, password included (for scripts: psql "$(taptouch-sync db-url --raw)")',
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
    parser.add_argument(
        "--days", type=_bounded(int, 1, 366), default=7, help="how many daily order partitions to load (default 7)"
    )
    parser.add_argument(
        "--accounts",
        action="store_true",
        help="two Taptouch accounts (north, south) in one deployment: TAPTOUCH_ACCOUNTS=north,south "
        "on a sandbox serving two clients with their own stores",
    )


def _demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(days=args.days, accounts=args.accounts)


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sandbox", action="store_true", help="serve the sandbox API and point TAPTOUCH_* at it (the demo's data)"
    )
    parser.add_argument(
        "--accounts", action="store_true", help="with --sandbox: the two-account demo (TAPTOUCH_ACCOUNTS=north,south)"
    )
    parser.add_argument(
        "--port", type=_bounded(int, 1, 65535), default=3000, help="the webserver's port (default 3000)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address the webserver listens on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
        "UI, which has no login, to the network)",
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        help="where to write the CLI's environment for this UI (default .taptouch/ui.env; "
        "`source` it so ./dev taptouch-sync / ./dev dagster use the same instance, warehouse "
        "and sandbox)",
    )


def _ui(args: argparse.Namespace) -> int:
    from pipelines.demo import run_ui

    return run_ui(sandbox=args.sandbox, port=args.port, host=args.host, accounts=args.accounts, env_file=args.env_file)


# --- authorize / tokens / refresh (merchant grants, docs/merchant-auth.md) ----------------------


def _account_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--account",
        metavar="NAME",
        help="an account of TAPTOUCH_ACCOUNTS: use its TAPTOUCH_<NAME>_CLIENT_ID / _CLIENT_SECRET / "
        "_BASE_URL; default the single-account TAPTOUCH_CLIENT_ID / _CLIENT_SECRET / _BASE_URL",
    )


def _credentials(account_name: str | None) -> tuple[str, str, str]:
    """(client id, secret, base URL) of the single account, or of ``--account NAME``."""
    from pipelines import settings
    from pipelines.accounts import ACCOUNTS_ENV, configured
    from taptouch_resource import TaptouchConfigError, TaptouchResource

    if not account_name:
        return TaptouchResource().resolved()
    try:
        accounts = {a.name: a for a in configured() if not a.is_default}
    except ValueError as err:
        raise TaptouchConfigError(str(err)) from None
    account = accounts.get(account_name)
    if account is None:
        listed = ", ".join(accounts) or "unset"
        raise TaptouchConfigError(
            f"--account {account_name!r} is not one of {ACCOUNTS_ENV} ({listed}). Add it there "
            f"(with TAPTOUCH_{account_name.upper()}_CLIENT_ID and _CLIENT_SECRET), or leave out "
            f"--account for the single-account TAPTOUCH_CLIENT_ID."
        )
    try:
        return settings.account_resource(TaptouchResource(), account).resolved()
    except settings.SettingError as err:
        raise TaptouchConfigError(str(err)) from None


def _taptouch_store(args: argparse.Namespace, *, read_only: bool = False):
    """(client id, secret, base URL, TokenStore) from TAPTOUCH_* (or ``--account``'s variables) and
    the warehouse, migrated first; ``read_only`` (a listing): never migrated here, refused while
    migrations are pending (some take minutes on a large warehouse: that is `migrate`'s to do)."""
    from pipelines.warehouse.db import resolve_database_url
    from pipelines.warehouse.migrations import migrate, pending
    from pipelines.warehouse.token_store import TokenStore
    from taptouch_resource import TaptouchConfigError

    client_id, secret, base_url = _credentials(getattr(args, "account", None))
    url = resolve_database_url(args.database_url)
    if not read_only:
        migrate(url)
    elif waiting := pending(url):
        raise TaptouchConfigError(
            f"the warehouse is not migrated ({len(waiting)} migration(s) pending, from {waiting[0]}), and listing "
            f"tokens only reads: run taptouch-sync migrate first (or point --database-url at the warehouse)"
        )
    account = getattr(args, "account", None) or None
    return client_id, secret, base_url, TokenStore.for_client(url, client_id, secret, account=account)


def _exit_code(err: Exception) -> int:
    """A configuration error (e.g. credentials unset) is 2, any other failure 1."""
    from taptouch_resource import TaptouchConfigError

    return EXIT_CONFIG if isinstance(err, TaptouchConfigError) else EXIT_FAILED


def _authorize_arguments(parser: argparse.ArgumentParser) -> None:
    _database_url_argument(parser)
    _account_argument(parser)
    parser.add_argument(
        "--merchant",
        default="default",
        help="a label for this merchant's grant (TaptouchResource.merchant); default 'default'",
    )
    parser.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        metavar="SCOPE",
        help="scope to ask the merchant for (repeatable); default integration.store",
    )
    parser.add_argument(
        "--redirect-uri",
        metavar="URI",
        help="the redirect URI registered with Taptouch; default http://127.0.0.1:PORT/callback. "
        "A non-loopback URI (a deployed callback) makes the command ask for the URL the "
        "merchant was redirected to",
    )
    parser.add_argument(
        "--port", type=_bounded(int, 0, 65535), default=8765, help="port of the loopback callback (0: any free port)"
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(float, 1, 86_400),
        default=300.0,
        help="seconds to wait for the merchant (default 300)",
    )
    parser.add_argument("--no-browser", action="store_true", help="only print the URL, do not open a browser")


def _has_browser() -> bool:
    import os

    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _authorize(args: argparse.Namespace) -> int:
    from pipelines.authorize import run_authorize
    from taptouch_resource import TaptouchError, api

    try:
        client_id, secret, base_url, store = _taptouch_store(args)
        result = run_authorize(
            base_url=base_url,
            client_id=client_id,
            client_secret=secret,
            store=store,
            merchant=args.merchant,
            scopes=tuple(args.scopes or (api.SCOPE_STORE,)),
            redirect_uri=args.redirect_uri,
            port=args.port,
            timeout=args.timeout,
            open_browser=not args.no_browser and _has_browser(),
            announce=lambda text: print(text, flush=True),
        )
    except TaptouchError as err:
        print(f"error: {err}", file=sys.stderr)
        return _exit_code(err)
    except (EOFError, KeyboardInterrupt) as err:  # no redirect URL pasted (input closed), or Ctrl-C
        what = "input ended" if isinstance(err, EOFError) else "interrupted"
        print(
            f"error: the authorization was cancelled ({what}) before the merchant's redirect: nothing stored. "
            "Run taptouch-sync authorize again.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    stores = ", ".join(map(str, result.store_ids)) or "none listed"
    print(f"Authorized merchant {result.merchant!r}: scopes {' '.join(result.scopes)}; stores {stores}.")
    schedule = f"{args.account}_merchant_tokens_keepalive" if args.account else "merchant_tokens_keepalive"
    again = f"taptouch-sync refresh --account {args.account}" if args.account else "taptouch-sync refresh"
    print(
        f"The tokens are stored encrypted in taptouch_auth.tokens; the {schedule} schedule "
        f"(or `{again}`) keeps them alive."
    )
    return EXIT_OK


def _tokens(args: argparse.Namespace) -> int:
    from taptouch_resource import TaptouchError

    try:
        client_id, _, base_url, store = _taptouch_store(args, read_only=True)
        grants = store.grants(client_id=client_id)  # this client's (account's) grants, not another's
    except TaptouchError as err:
        print(f"error: {err}", file=sys.stderr)
        return _exit_code(err)
    if not grants:
        print("No tokens stored. Connect a merchant with: taptouch-sync authorize --merchant NAME")
        return EXIT_OK
    for g in grants:
        who = f"merchant {g.label}" if g.grant_type == "authorization_code" else "client credentials"
        refresh = (
            f"refresh token valid until {g.refresh_expires_at:%Y-%m-%d %H:%M} UTC"
            if g.has_refresh_token
            else "no usable refresh token"
            if g.grant_type == "authorization_code"
            else ""
        )
        print(
            f"{who} [{g.client_id} @ {g.base_url}]: scopes {' '.join(g.scopes)}; "
            f"access until {g.access_expires_at:%Y-%m-%d %H:%M} UTC; {refresh}"
            + (f"; stores {', '.join(map(str, g.store_ids))}" if g.store_ids else "")
            + f"; {g.rotations} refresh(es) since authorized {g.authorized_at:%Y-%m-%d %H:%M} UTC"
        )
        if g.last_error:
            print(f"  ! {g.last_error}")
    return EXIT_OK


def _tokens_arguments(parser: argparse.ArgumentParser) -> None:
    _database_url_argument(parser)
    _account_argument(parser)


def _refresh_arguments(parser: argparse.ArgumentParser) -> None:
    _database_url_argument(parser)
    _account_argument(parser)
    parser.add_argument(
        "--min-remaining-hours",
        type=_bounded(float, 0, 96),
        default=72.0,
        help="rotate refresh tokens with less than this left of their 4 days (default 72)",
    )


def _refresh(args: argparse.Namespace) -> int:
    from pipelines.authorize import keep_merchants_alive
    from taptouch_resource import TaptouchError

    try:
        client_id, secret, base_url, store = _taptouch_store(args)
        results = keep_merchants_alive(
            store,
            base_url=base_url,
            client_id=client_id,
            client_secret=secret,
            min_remaining=args.min_remaining_hours * 3600,
        )
    except TaptouchError as err:
        print(f"error: {err}", file=sys.stderr)
        return _exit_code(err)
    if not results:
        print("No merchant grant stored for this client and base URL.")
    for r in results:
        print(f"merchant {r.merchant}: " + (f"FAILED: {r.error}" if r.error else "rotated" if r.rotated else "fresh"))
    return EXIT_FAILED if any(r.error for r in results) else EXIT_OK


# --- rebuild ---------------------------------------------------------------------------------


def _rebuild_arguments(parser: argparse.ArgumentParser) -> None:
    _database_url_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=_bounded(int, 1, 100_000),
        default=2000,
        help="rows per batch; each batch is its own transaction (default 2000)",
    )


def _rebuild(args: argparse.Namespace) -> int:
    from pipelines.settings import SettingError, business_day_start
    from pipelines.warehouse.db import connect, redact_url, resolve_database_url
    from pipelines.warehouse.migrations import migrate
    from pipelines.warehouse.rebuild import rebuild

    try:
        day_start = business_day_start()
    except SettingError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    url = resolve_database_url(args.database_url)
    migrate(url)
    print(
        f"Rebuilding the typed tables of {redact_url(url)} from raw (no API call; safe to interrupt and run again)",
        flush=True,
    )
    with connect(url, autocommit=True) as conn:
        report = rebuild(
            conn,
            batch_size=args.batch_size,
            progress=lambda text: print(text, flush=True),
            day_start=day_start,
        )
    for line in report.lines():
        print(line)
    print(
        f"{report.changed} row(s) changed." if report.changed else "Nothing changed: every typed row matches its raw."
    )
    return EXIT_OK


# --- forget-customer -------------------------------------------------------------------------


def _forget_customer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "customer_id",
        metavar="ID",
        type=_bounded(int, 0, 2**63 - 1, what="a Taptouch customer id (a whole number, e.g. 901)"),
        help="the customer's Taptouch id (taptouch.orders.customer_id)",
    )
    _database_url_argument(parser)


def _forget_customer(args: argparse.Namespace) -> int:
    from pipelines.warehouse.db import connect, redact_url, resolve_database_url
    from pipelines.warehouse.forget import forget_customer
    from pipelines.warehouse.migrations import migrate

    url = resolve_database_url(args.database_url)
    migrate(url)
    with connect(url, autocommit=True) as conn:
        changed = forget_customer(conn, args.customer_id)
    print(f"Customer {args.customer_id}: personal fields removed from {redact_url(url)} (one transaction):")
    for table, rows in changed.items():
        print(f"  {table}: {rows} row(s) changed")
    if not any(changed.values()):
        print("Nothing to remove: the warehouse holds no personal field of this customer.")
    return EXIT_OK


def _move_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "store_id",
        metavar="STORE",
        type=_bounded(int, 0, 2**63 - 1, what="a Taptouch store id (a whole number, e.g. 1042)"),
        help="the store's Taptouch id (taptouch.stores.store_id)",
    )
    parser.add_argument(
        "account",
        metavar="ACCOUNT",
        help="the account that now holds the store's grant: a name of TAPTOUCH_ACCOUNTS ('default' when unset)",
    )
    _database_url_argument(parser)


def _move_store(args: argparse.Namespace) -> int:
    from pipelines import accounts
    from pipelines.warehouse.db import connect, redact_url, resolve_database_url
    from pipelines.warehouse.migrations import migrate
    from pipelines.warehouse.ownership import StoreMoveError, move_store

    name = args.account.strip()
    try:
        known = [a.name for a in accounts.configured()]  # TAPTOUCH_ACCOUNTS, or the single 'default'
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if name not in known:
        print(
            f"error: {name!r} is not an account of this code location: TAPTOUCH_ACCOUNTS names "
            f"{', '.join(known)} (unset: the single account 'default'); give one of them",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    url = resolve_database_url(args.database_url)
    migrate(url)
    with connect(url, autocommit=True) as conn:
        try:
            changed = move_store(conn, args.store_id, name)
        except StoreMoveError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_CONFIG
    if not any(changed.values()):
        print(f"Store {args.store_id}: every row already carries account {name}: nothing changed.")
        return EXIT_OK
    print(f"Store {args.store_id} handed to account {name} in {redact_url(url)} (one transaction):")
    for table, rows in changed.items():
        print(f"  taptouch.{table}: {rows} row(s)")
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "demo": Command(_demo, "run the whole pipeline on the sandbox API and the embedded PostgreSQL", _demo_arguments),
    "ui": Command(_ui, "open the Dagster UI (dagster dev) on the local instance", _ui_arguments),
    "migrate": Command(_migrate, "apply pending database migrations", _database_url_argument),
    "db-url": Command(_db_url, "print the database URL and how to open psql on it", _db_url_arguments),
    "authorize": Command(
        _authorize, "connect a merchant: authorization code + PKCE; stores the tokens encrypted", _authorize_arguments
    ),
    "tokens": Command(_tokens, "list stored OAuth grants (never the tokens)", _tokens_arguments),
    "refresh": Command(_refresh, "rotate merchant refresh tokens before their 4 days run out", _refresh_arguments),
    "rebuild": Command(
        _rebuild, "re-derive every typed table from raw (no API call) and retry quarantined records", _rebuild_arguments
    ),
    "forget-customer": Command(
        _forget_customer,
        "remove one customer's personal fields (name, e-mail, ...) from raw, the order history and the typed tables",
        _forget_customer_arguments,
    ),
    "move-store": Command(
        _move_store,
        "hand a store to another account (its grant moved): every row of the store takes that account",
        _move_store_arguments,
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse, except that a usage error never echoes a password: ``taptouch-sync migrate
    postgresql://u:pw@h/db`` (the flag forgotten) quotes the URL as an unrecognized argument."""

    def error(self, message: str) -> NoReturn:
        from pipelines.warehouse.urls import redact_text

        super().error(redact_text(message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="taptouch-sync",
        description="Keep a Taptouch merchant's data in Postgres.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
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
    # demo/ui print their own progress and Dagster prints the runs' logs: keep the root logger quiet
    quiet = args.quiet or args.command in ("demo", "ui")
    level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        # records propagated from other loggers (Dagster's, which prints its own) skip the root
        # logger's level: only the handler's keeps them from being printed twice
        handler.setLevel(level)
    for noisy in ("pgserver", "httpx", "alembic"):  # their INFO lines are debugging noise here
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from pipelines.warehouse.db import (
        DATABASE_URL_ENV,
        EmbeddedServerError,
        WarehouseConfigError,
        secrets_of,
        warehouse_misconfigured,
    )
    from pipelines.warehouse.db import redact_text as _redact_text
    from pipelines.warehouse.embedded import EmbeddedSettingError
    from pipelines.warehouse.migrations import MigrationError

    # Every message below goes through redact_text too: connection errors already come without the
    # password (pipelines.warehouse.db), this catches any URL or password= that slipped through,
    # and the password of the database URLs this command was given, in every reading (libpq quotes
    # a password it cannot parse without the URL around it: `invalid percent-encoded token: "..."`).
    known = secrets_of(os.environ.get(DATABASE_URL_ENV, "").strip()) | secrets_of(
        (getattr(args, "database_url", None) or "").strip()
    )

    def redact_text(text: str) -> str:
        return _redact_text(text, known)

    try:
        return args._run(args)
    except WarehouseConfigError as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_CONFIG
    except EmbeddedSettingError as err:  # TAPTOUCH_PGDATA: a setting to fix
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_CONFIG
    except (MigrationError, EmbeddedServerError) as err:
        print(f"error: {redact_text(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except psycopg.OperationalError as err:
        print(f"error: cannot reach the database: {redact_text(str(err).strip())}", file=sys.stderr)
        # a URL that fails the same way on every attempt (its options, credentials, host name) is
        # a configuration error; a server briefly away is a failure
        return EXIT_CONFIG if warehouse_misconfigured(err) else EXIT_FAILED
    except psycopg.Error as err:  # e.g. a URL libpq cannot parse (ProgrammingError)
        print(f"error: the database URL or connection failed: {redact_text(str(err).strip())}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
