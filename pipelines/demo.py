"""The one-command demo and the local UI, on the embedded defaults.

``taptouch-sync demo`` starts the sandbox API over HTTP and the embedded PostgreSQL, runs the real
assets (``stores``, ``inventory``, the last N days of ``orders`` as one ranged run, the analytics
views) on a persistent local instance (``.taptouch/dagster_home``, which ``taptouch-sync ui`` shows),
and prints a summary; ``--accounts`` does it for two accounts, on an instance and a warehouse database
of its own (``.taptouch/dagster_home_accounts``, ``taptouch_accounts``), so neither demo shows the
other's assets or rows. It is safe to re-run, and the sandbox
is used only because this command says so, on screen. What it shows: the README.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from .warehouse.db import libpq_url, project_root, redact_url, resolve_database_url

SANDBOX_DAYS = 30
SANDBOX_STORES = 3
ACCOUNTS_DEMO_HOME = "dagster_home_accounts"
"""The two-account demo's Dagster instance, in ``.taptouch/``: apart from the single-account one."""
ACCOUNTS_DEMO_DATABASE_SUFFIX = "_accounts"
"""The two-account demo's warehouse: the embedded server's database name plus this (``taptouch_accounts``)."""


LOCAL_INSTANCE_YAML = """\
# Local Dagster instance of `taptouch-sync demo` / `taptouch-sync ui` (written once; edit freely).
python_logs:
  # the client's retries / 429s / token refreshes and the loader's quarantine lines reach the event log
  managed_python_loggers: [taptouch_resource, pipelines]
  python_log_level: INFO
concurrency:
  pools:
    default_limit: 2   # at most 2 steps in the taptouch_api pool at once (API budget)
telemetry:
  enabled: false
"""


def dagster_home() -> Path:
    """The local instance directory (``DAGSTER_HOME`` or ``.taptouch/dagster_home``), with a dagster.yaml.

    Owner only: directories it creates are 0700, and the process umask becomes 077, so the run
    storage, event logs and compute logs Dagster writes next (this process and ``dagster dev``,
    which inherits the umask) are readable by their owner alone. The default home, the project's
    own, is tightened to 0700 when an older version left it open."""
    from .warehouse.db import private_dir, state_dir

    os.umask(0o077)
    configured = os.environ.get("DAGSTER_HOME")
    home = Path(configured) if configured else state_dir() / "dagster_home"
    private_dir(home)
    if not configured and home.stat().st_uid == os.geteuid():
        os.chmod(home, 0o700)
    config = home / "dagster.yaml"
    if not config.exists():
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(LOCAL_INSTANCE_YAML)
    return home


@contextlib.contextmanager
def sandbox_env(seed: int = 1, stores: int = SANDBOX_STORES, days: int = SANDBOX_DAYS) -> Iterator[str]:
    """Serve the sandbox over HTTP and point TAPTOUCH_* at it for this process and its children."""
    from taptouch_sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig(seed=seed, stores=stores, days=days))
    with sb.serve(host="127.0.0.1", port=0) as url:
        print(f"==> sandbox Taptouch API (fake, deterministic data: {stores} stores, {days} days) at {url}")
        with _exported(
            {
                "TAPTOUCH_BASE_URL": url,
                "TAPTOUCH_CLIENT_ID": sb.config.client_id,
                "TAPTOUCH_CLIENT_SECRET": sb.config.client_secret,
            }
        ):
            yield url


@contextlib.contextmanager
def _exported(values: dict[str, str]) -> Iterator[None]:
    """``values`` in the environment of this process and its children, restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def sandbox_accounts_env(days: int = SANDBOX_DAYS) -> Iterator[str]:
    """Serve the two-account sandbox (one server, clients ``north`` and ``south`` with their own
    stores) and set ``TAPTOUCH_ACCOUNTS=north,south`` and each account's ``TAPTOUCH_<NAME>_*`` for
    this process and its children. Set before the definitions load: they read TAPTOUCH_ACCOUNTS."""
    from taptouch_sandbox.group import demo_group

    group, members = demo_group(days=days)
    with group.serve(host="127.0.0.1", port=0) as url:
        values = {"TAPTOUCH_ACCOUNTS": ",".join(members)}
        for name, sb in members.items():
            values.update(
                {
                    f"TAPTOUCH_{name.upper()}_BASE_URL": url,
                    f"TAPTOUCH_{name.upper()}_CLIENT_ID": sb.config.client_id,
                    f"TAPTOUCH_{name.upper()}_CLIENT_SECRET": sb.config.client_secret,
                }
            )
        described = ", ".join(f"{name}: stores {', '.join(map(str, sb.store_ids()))}" for name, sb in members.items())
        print(f"==> sandbox Taptouch API (fake, deterministic data, {days} days) at {url}, two clients: {described}")
        with _exported(values):
            yield url


def use_accounts_demo_home() -> None:
    """Point ``DAGSTER_HOME`` at the two-account demo's own instance (``.taptouch/dagster_home_accounts``)
    unless it is set: the single-account UI then never lists ``north/*`` and ``south/*`` assets."""
    from .warehouse.db import state_dir

    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(state_dir() / ACCOUNTS_DEMO_HOME)


def accounts_demo_database(url: str) -> str:
    """The two-account demo's warehouse beside the embedded one at ``url``: the database named
    ``<its name>_accounts`` on the same server, created when missing. Its stores, orders and views
    never mix with the single-account demo's."""
    from psycopg import sql

    from .warehouse.db import connect_url, first_value, with_database

    with connect_url(url, autocommit=True) as conn:
        database = first_value(conn.execute("select current_database()")) + ACCOUNTS_DEMO_DATABASE_SUFFIX
        if not conn.execute("select 1 from pg_database where datname = %s", (database,)).fetchone():
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    return with_database(url, database)


def forget_other_demo_assets(instance, defined) -> list[str]:
    """Wipe, from the instance, the assets of the two-account demo's accounts (``north/*``,
    ``south/*``) that ``defined`` (the loaded definitions' asset keys) lacks: what an older version
    of ``demo --accounts`` left in the single-account instance. Returns their keys."""
    from taptouch_sandbox.group import DEMO_ACCOUNTS

    stale = [
        key
        for key in instance.all_asset_keys()
        if len(key.path) > 1 and key.path[0] in DEMO_ACCOUNTS and key not in defined
    ]
    if stale:
        instance.wipe_assets(stale)
    return sorted(key.to_user_string() for key in stale)


def _run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _start(title: str, accounts: bool = False):
    """The demo's Dagster instance (owner-only, under .taptouch/) and warehouse, announced.
    ``accounts``: the two-account demo's own instance and, on the embedded PostgreSQL, its own
    database (see :func:`use_accounts_demo_home`, :func:`accounts_demo_database`); a
    ``DAGSTER_HOME`` or ``TAPTOUCH_DATABASE_URL`` that is set is used as it is."""
    from .warehouse.db import DATABASE_URL_ENV

    if accounts:
        use_accounts_demo_home()
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    import dagster as dg

    t0 = time.monotonic()
    print(f"==> {title}")
    url = resolve_database_url()
    if accounts and not os.environ.get(DATABASE_URL_ENV, "").strip():
        url = accounts_demo_database(url)
        os.environ[DATABASE_URL_ENV] = url  # the runs' warehouse resource reads it
    print(f"==> warehouse: {redact_url(url)}")
    instance = dg.DagsterInstance.get()
    print(f"==> Dagster instance: {os.environ['DAGSTER_HOME']}")
    return t0, url, instance


def demo_stores() -> list[dict]:
    """Every store the demos' sandboxes serve (the demo's, and both accounts' of ``demo --accounts``:
    disjoint, so both demos may share a warehouse); names depend on the store's index only."""
    from taptouch_sandbox import Sandbox, SandboxConfig
    from taptouch_sandbox.group import demo_group

    own = Sandbox(SandboxConfig(seed=1, stores=SANDBOX_STORES, days=SANDBOX_DAYS)).stores()
    return own + [s for member in demo_group(days=1)[1].values() for s in member.stores()]


def refuse_a_real_warehouse(url: str, sandbox_stores: list[dict]) -> None:
    """The demo writes fake data: a warehouse holding a store the sandbox does not serve (a real
    merchant's: another id, or another name under the same id) is refused before anything is
    written, with what to do (``WarehouseConfigError``: exit 2). An empty warehouse, or one an
    earlier demo filled, is used."""
    from .warehouse.db import DATABASE_URL_ENV, WarehouseConfigError, connect_url

    served = {(int(s["id"]), s["name"]) for s in sandbox_stores}
    # connect_url: libpq's error is re-raised without the password (it may quote it)
    with connect_url(url, autocommit=True) as conn:
        if conn.execute("select to_regclass('taptouch.stores')").fetchone() in (None, (None,)):
            return
        held = conn.execute("select store_id, name from taptouch.stores order by store_id").fetchall()
    foreign = [f"{sid} ({name!r})" for sid, name in held if (sid, name) not in served]
    if foreign:
        raise WarehouseConfigError(
            f"the demo loads the sandbox's fake stores and orders, and the warehouse at {redact_url(url)} holds "
            f"stores the sandbox does not serve: {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. "
            f"Nothing was written. Unset {DATABASE_URL_ENV} to run the demo on the embedded PostgreSQL, or point "
            "it at an empty database."
        )


def run_demo(days: int = 7, accounts: bool = False) -> int:
    if accounts:
        return run_accounts_demo(days)
    own_home = not os.environ.get("DAGSTER_HOME")
    from .warehouse.db import DATABASE_URL_ENV

    where = (
        "PostgreSQL at $" + DATABASE_URL_ENV if os.environ.get(DATABASE_URL_ENV, "").strip() else "embedded PostgreSQL"
    )
    t0, url, instance = _start(f"taptouch-sync demo: sandbox API + {where} + Dagster, end to end")
    refuse_a_real_warehouse(url, demo_stores())
    from .assets.analytics import analytics_assets
    from .definitions import RESOURCES, defs
    from .warehouse.resource import PostgresResource

    if own_home:  # the demo's own instance: assets an older `demo --accounts` left here go
        forgotten = forget_other_demo_assets(instance, set(defs.get_repository_def().asset_graph.get_all_asset_keys()))
        if forgotten:
            print(
                f"==> removed from this instance the assets of an earlier `demo --accounts`: {', '.join(forgotten)}"
                f" (that demo now keeps its own, in .taptouch/{ACCOUNTS_DEMO_HOME})"
            )

    with sandbox_env():
        today = datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        # partitions are UTC days; business dates are local (up to UTC+13 here): load one more day
        first_partition = first - timedelta(days=1)
        defs.get_repository_def()  # the same code location the UI and the CLI load
        stores, orders, inventory = (defs.get_assets_def(key) for key in ("stores", "orders", "inventory"))

        print("==> [1/3] stores and inventory")
        _materialize([stores, inventory], instance, RESOURCES)
        print(f"==> [2/3] orders, partitions {first_partition} .. {today} (one ranged backfill run)")
        loaded = _materialize([orders], instance, RESOURCES, partitions=(first_partition, today))
        print("==> [3/3] analytics views")
        _materialize([*analytics_assets], instance, RESOURCES)
    print_summary(PostgresResource(database_url=url), first, today)
    print(f"\nThis run's orders: {_orders_counts(loaded)}.")
    print(
        f"\nDone in {time.monotonic() - t0:.0f}s. Running it again is safe (nothing is duplicated: a re-run "
        f"reports 0 inserted, 0 updated)."
    )
    print("Explore the same data:")
    print("  ./dev ui                         # Dagster UI on http://127.0.0.1:3000 (runs, assets, checks, schedules)")
    print("  ./dev taptouch-sync db-url       # the database URL and the psql command")
    print('  psql "$(./dev taptouch-sync db-url --raw)" -c "select * from analytics.daily_store_sales"')
    return 0


def run_accounts_demo(days: int = 7) -> int:
    """The demo with two accounts in one deployment: each account's stores, inventory and orders
    as its own runs, then the shared analytics views, and a per-account summary."""
    t0, url, instance = _start(
        "taptouch-sync demo --accounts: two Taptouch accounts, one deployment, one warehouse", accounts=True
    )
    refuse_a_real_warehouse(url, demo_stores())
    import dagster as dg

    from .warehouse.resource import PostgresResource

    with sandbox_accounts_env():
        from . import definitions  # loaded now: TAPTOUCH_ACCOUNTS is set

        today = datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        first_partition = first - timedelta(days=1)
        assets = list(definitions.defs.assets or [])
        resources = definitions.RESOURCES
        for account in definitions.ACCOUNTS:
            print(f"==> [{account.name}] {account.key_string('stores')} and {account.key_string('inventory')}")
            _materialize(assets, instance, resources, selection=[account.key("stores"), account.key("inventory")])
            print(
                f"==> [{account.name}] {account.key_string('orders')}, partitions {first_partition} .. {today}"
                " (one ranged backfill run)"
            )
            _materialize(
                assets, instance, resources, selection=[account.key("orders")], partitions=(first_partition, today)
            )
        print("==> analytics views (shared: every account's rows, with their account)")
        _materialize(assets, instance, resources, selection=dg.AssetSelection.groups("analytics"))
    print_accounts_summary(PostgresResource(database_url=url), first, today)
    print(f"\nDone in {time.monotonic() - t0:.0f}s. Running it again is safe (nothing is duplicated).")
    print("Explore the same data (this demo's own Dagster instance and warehouse, apart from `./dev demo`'s):")
    print("  ./dev ui --sandbox --accounts    # Dagster UI with both accounts' assets (north/..., south/...)")
    target = shlex.quote(libpq_url(url)) if redact_url(url) == url else '"$(./dev taptouch-sync db-url --raw)"'
    print(
        f'  psql {target} -c "select account, business_date, sum(net_sales)'
        " from analytics.daily_store_sales where day_complete group by account, business_date"
        ' order by business_date, account"'
    )
    return 0


def print_accounts_summary(warehouse, first: date, last: date) -> None:
    """Orders and net sales per account and business date, from one query over both accounts."""
    from .assets.preview import read_frame

    frame = read_frame(
        warehouse,
        "select account, business_date as date, count(distinct store_id) as stores, sum(order_count)::integer as orders,"
        " sum(net_sales) as net_sales, case when bool_and(day_complete) then '' else 'partial' end as day"
        " from analytics.daily_store_sales"
        " where business_date between :first and :last group by account, business_date"
        " order by business_date, account",
        first=first,
        last=last,
    )
    print(
        f"\nanalytics.daily_store_sales per account, business dates {first} .. {last}"
        " (partial: some store's day is not completely loaded yet, see docs/analytics.md):"
    )
    print(frame.to_string(index=False, justify="left", formatters={"net_sales": lambda v: f"{v:>12,.2f}"}))


def _orders_counts(result) -> str:
    """'N inserted, M updated, K unchanged, Q quarantined', summed over the orders run's
    materializations (one per partition, each carrying its own window's counts)."""
    keys = ("inserted", "updated", "unchanged", "quarantined")
    totals = dict.fromkeys(keys, 0)
    for event in result.asset_materializations_for_node("orders"):
        for key in keys:
            entry = event.metadata.get(key)
            totals[key] += int(entry.value) if entry is not None else 0
    return ", ".join(f"{totals[k]} {k}" for k in keys)


def _materialize(assets, instance, resources, *, selection=None, partitions: tuple[date, date] | None = None):
    """One demo run of ``assets`` (only the ``selection`` of them, if given; the UTC-day
    ``partitions`` first..last as one ranged run, if given): its result, or SystemExit if it failed."""
    import dagster as dg

    tags = {"source": "demo"}
    if partitions is not None:
        tags = {
            "dagster/asset_partition_range_start": partitions[0].isoformat(),
            "dagster/asset_partition_range_end": partitions[1].isoformat(),
            **tags,
        }
    result = dg.materialize(
        assets, instance=instance, resources=resources, run_config=_run_config(), selection=selection, tags=tags
    )
    _check(result)
    return result


def _check(result) -> None:
    if not result.success:
        raise SystemExit("demo: a Dagster run failed; see the log above")


SUMMARY_TABLES = ("stores", "orders", "order_items", "order_payments", "order_refunds", "inventory_levels")


def print_summary(warehouse, first: date, last: date) -> None:
    """Row counts, then orders and net sales per store and business date (pandas through the
    warehouse's SQLAlchemy engine; ``warehouse`` is a ``PostgresResource``)."""
    from .assets.preview import read_frame

    counts = read_frame(
        warehouse,
        " union all ".join(f"select '{t}' as table_name, count(*) as n from taptouch.{t}" for t in SUMMARY_TABLES)
        + " union all select 'quarantined', count(*) from taptouch.quarantine where resolved_at is null",
    )
    sales = read_frame(
        warehouse,
        "select store_id as store, store_name as name, business_date as date, order_count as orders,"
        " net_sales, case when day_complete then '' else 'partial' end as day"
        " from analytics.daily_store_sales where business_date between :first and :last and account = 'default'"
        " order by store_id, business_date",
        first=first,
        last=last,
    )
    others = read_frame(
        warehouse, "select distinct account from taptouch.stores where account <> 'default' order by account"
    )["account"].tolist()
    print("\nWhat the warehouse holds:")
    print("  " + ", ".join(f"{r.table_name} {r.n}" for r in counts.itertuples()))
    if others:
        print(
            f"  (also the stores of account(s) {', '.join(others)}, loaded before `demo --accounts` kept"
            " its own database: left out below)"
        )
    print(
        f"\nanalytics.daily_store_sales, account 'default', business dates {first} .. {last}"
        " (partial: a day not completely loaded yet, see docs/analytics.md):"
    )
    sales["name"] = sales["name"].fillna("").str.slice(0, 28)
    print(
        sales.to_string(
            index=False,
            justify="left",
            formatters={"name": lambda v: f"{v:<28}", "net_sales": lambda v: f"{v:>12,.2f}"},
        )
    )


UI_ENV_FILE = "ui.env"
"""Name of the file, in ``.taptouch/``, where ``taptouch-sync ui`` writes the CLI's environment."""
UI_GRACE_S = 10.0
"""Seconds ``dagster dev`` gets to shut its services down after being asked, before SIGTERM."""
UI_TERM_GRACE_S = 4.0
"""Seconds the UI's process group gets after SIGTERM, before SIGKILL."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Stop(BaseException):
    """Raised in the main thread by the first stop signal (a BaseException, like KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopSignals:
    """Handlers for SIGTERM, SIGINT and SIGHUP in ``taptouch-sync ui``.

    The first signal raises :class:`_Stop` (or, while ``deferred``, is only recorded); later ones are
    counted: a second one skips the graceful wait. A SIGHUP ignored when the command started
    (``nohup``) stays ignored; SIGINT and SIGTERM are always handled, even when the shell that started
    the command in the background ignored SIGINT. Signals this process *handles* are reset to their
    default in the children it starts (``exec`` does so), so ``dagster dev`` and its services never
    inherit an ignored SIGINT or SIGTERM."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.deferred = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopSignals:
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue  # nohup: the user asked for hangups to be ignored
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            if not self.deferred:
                raise _Stop(signum)

    def raise_pending(self) -> None:
        if self.signum is not None:
            raise _Stop(self.signum)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``: from /proc on Linux, else whether
    ``killpg(pgid, 0)`` finds any process (zombies included)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state ppid pgrp ...
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_group(proc: subprocess.Popen, pgid: int, timeout: float) -> bool:
    """Whether every process of the group is gone within ``timeout`` seconds (reaping ``proc``)."""
    deadline = time.monotonic() + timeout
    while True:
        proc.poll()
        if not _group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_tree(proc: subprocess.Popen, shutdown_fd: int | None, signals: _StopSignals) -> None:
    """Stop ``dagster dev`` and every process of its group (webserver, daemon, code server, runs).

    1. the shutdown message on ``dagster dev``'s shutdown pipe (its own graceful stop), up to
       :data:`UI_GRACE_S` seconds — skipped when a second stop signal arrived;
    2. SIGTERM to the group, up to :data:`UI_TERM_GRACE_S` seconds;
    3. SIGKILL to the group."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    if shutdown_fd is not None:
        with contextlib.suppress(OSError):
            os.write(shutdown_fd, b"SHUTDOWN\n")
    deadline = time.monotonic() + UI_GRACE_S
    while time.monotonic() < deadline and signals.count < 2:
        if _wait_group(proc, pgid, 0.2):
            return
    print("==> the Dagster UI did not stop in time: SIGTERM to its processes", flush=True)
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group(proc, pgid, UI_TERM_GRACE_S):
        return
    print("==> SIGKILL to the Dagster UI's remaining processes", flush=True)
    _signal_group(pgid, signal.SIGKILL)
    _wait_group(proc, pgid, 5.0)
    proc.poll()


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"taptouch-sync ui: {host}:{port} is in use ({exc.strerror}): another `./dev ui` or Dagster "
                f"webserver still runs there. Stop it, or choose another port with --port."
            ) from None


def _ui_env_lines(pid: int, sandbox_keys: Sequence[str], database_url: str, database_from_env: bool) -> list[str]:
    """The ``source``-able lines of the UI's CLI environment (see :func:`run_ui`)."""
    q = shlex.quote
    lines = [
        f"# Written by `taptouch-sync ui` (pid {pid}); valid while that UI runs, removed when it stops.",
        "# `source` it in another shell: ./dev taptouch-sync ... and ./dev dagster ... then use the UI's",
        "# Dagster instance (their runs show in the UI), warehouse and sandbox API.",
        f"export DAGSTER_HOME={q(os.environ['DAGSTER_HOME'])}",
    ]
    if database_from_env and redact_url(database_url) != database_url:
        lines.append(
            "# TAPTOUCH_DATABASE_URL: the one of the environment that started the UI (it holds a password,"
            " so it is not written here)"
        )
    else:
        lines.append(f"export TAPTOUCH_DATABASE_URL={q(database_url)}")
    if sandbox_keys:
        lines.append("# the local sandbox API: a FAKE client id and secret of a test server, not a real credential")
        lines += [f"export {key}={q(os.environ[key])}" for key in sandbox_keys]
        if "TAPTOUCH_ACCOUNTS" not in os.environ:
            lines.append("unset TAPTOUCH_ACCOUNTS  # the UI runs the single-account sandbox")
    else:
        lines.append(
            "# TAPTOUCH_CLIENT_ID / _SECRET / _BASE_URL (or TAPTOUCH_ACCOUNTS): as in the environment that"
            " started the UI (real credentials are not written here)"
        )
    return lines


def _write_private_text(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def run_ui(
    sandbox: bool, port: int = 3000, host: str = "127.0.0.1", accounts: bool = False, env_file: str | Path | None = None
) -> int:
    """``dagster dev`` on this code location and the local instance (optionally with the sandbox,
    ``accounts``: the two-account sandbox and TAPTOUCH_ACCOUNTS=north,south, on the instance and
    warehouse of ``demo --accounts`` unless DAGSTER_HOME / TAPTOUCH_DATABASE_URL say otherwise), until
    a stop signal.

    * **The CLI's environment.** The warehouse URL is resolved once (the embedded PostgreSQL is started
      here when ``TAPTOUCH_DATABASE_URL`` is unset) and given to ``dagster dev``; ``DAGSTER_HOME``, that
      URL and the sandbox's ``TAPTOUCH_*`` are printed and written to ``env_file`` (default
      ``.taptouch/ui.env``, mode 0600): ``source`` it and ``./dev taptouch-sync ...`` / ``./dev dagster
      ...`` act on the same sandbox, warehouse and instance. Real credentials are never written.
    * **Stopping.** ``dagster dev`` runs in its own session (process group); SIGTERM, SIGINT or SIGHUP to
      this process asks it to stop through its shutdown pipe, then SIGTERM and finally SIGKILL go to its
      whole group (webserver, daemon, code server, runs): see :func:`_stop_tree`. Then the sandbox API
      stops, the env file is removed, and the embedded PostgreSQL is stopped if this command started it
      (one already running is left running). Should this process die without cleaning up (SIGKILL),
      ``dagster dev`` gets SIGTERM (on Linux: :func:`_dies_with_parent`). With the sandbox, a warehouse
      holding a real merchant's stores is refused (:func:`refuse_a_real_warehouse`). Returns 0 after a
      stop asked by a signal, else ``dagster dev``'s exit status."""
    from .warehouse.db import DATABASE_URL_ENV, state_dir

    with _StopSignals() as signals, contextlib.ExitStack() as stack:
        try:
            if sandbox and accounts:  # the two-account demo's own instance and warehouse (as `demo --accounts`)
                use_accounts_demo_home()
            os.environ["DAGSTER_HOME"] = str(dagster_home())
            _check_port_free(host, port)
            database_url, database_from_env = _ui_warehouse(signals, stack, accounts_demo=sandbox and accounts)
            print(f"==> warehouse: {redact_url(database_url)}", flush=True)
            stack.enter_context(_exported({DATABASE_URL_ENV: database_url}))
            before = dict(os.environ)
            if sandbox:
                refuse_a_real_warehouse(database_url, demo_stores())  # no fake stores in a real merchant's warehouse
                stack.enter_context(sandbox_accounts_env() if accounts else sandbox_env())
            elif not os.environ.get("TAPTOUCH_CLIENT_ID") and not os.environ.get("TAPTOUCH_ACCOUNTS"):
                print("note: TAPTOUCH_CLIENT_ID is not set; runs will fail until it is (or use --sandbox).")
            sandbox_keys = sorted(k for k, v in os.environ.items() if k.startswith("TAPTOUCH_") and before.get(k) != v)
            path = Path(env_file) if env_file else state_dir() / UI_ENV_FILE
            lines = _ui_env_lines(os.getpid(), sandbox_keys, database_url, database_from_env)
            text = "\n".join(lines) + "\n"
            _write_private_text(path, text)
            stack.callback(_remove_if_ours, path, text)
            print(
                f"==> the CLI's environment for this UI, written to {path} (in another shell: source {path}):",
                flush=True,
            )
            for line in lines:
                print(f"    {line}")
            print(
                f"==> Dagster UI on http://{host}:{port} (Ctrl-C or SIGTERM stops it and everything it started)",
                flush=True,
            )
            return _serve(host, port, signals)
        except _Stop as stop:
            print(f"==> taptouch-sync ui: stopped by {signal.Signals(stop.signum).name}", flush=True)
            return 0
        finally:
            signals.deferred = True  # the clean-up below (sandbox, env file, PostgreSQL) runs to its end


def _ui_warehouse(signals: _StopSignals, stack: contextlib.ExitStack, accounts_demo: bool) -> tuple[str, bool]:
    """(the UI's warehouse URL, whether it came from TAPTOUCH_DATABASE_URL). Unset, the embedded
    PostgreSQL is started (uninterrupted by a stop signal) and, if this call started it, stopped when
    ``stack`` closes; ``accounts_demo``: its database of the two-account demo."""
    from .warehouse.db import DATABASE_URL_ENV, stop_embedded_server
    from .warehouse.embedded import _embedded_running, embedded_data_dir

    if os.environ.get(DATABASE_URL_ENV, "").strip():
        return resolve_database_url(), True
    pgdata = embedded_data_dir()
    signals.deferred = True  # the start of the embedded server is not interrupted halfway
    was_running = _embedded_running(pgdata)
    database_url = resolve_database_url()
    if not was_running:
        stack.callback(_stop_embedded, stop_embedded_server, pgdata)
    signals.deferred = False
    signals.raise_pending()
    return (accounts_demo_database(database_url) if accounts_demo else database_url), False


def _serve(host: str, port: int, signals: _StopSignals) -> int:
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions", "-h", host, "-p", str(port)]
    read_fd, write_fd = os.pipe()
    signals.deferred = True  # no stop between the fork and knowing the child
    try:
        proc = subprocess.Popen(
            [*cmd, "--shutdown-pipe", str(read_fd)],
            cwd=project_root(),
            pass_fds=[read_fd],
            start_new_session=True,
            preexec_fn=_dies_with_parent(),
        )
    finally:
        os.close(read_fd)
        signals.deferred = False
    try:
        signals.raise_pending()
        while True:  # never one blocking wait: a signal that lands on another thread (the sandbox's
            try:  # server) would run its handler only when the main thread runs Python code again
                code = proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                continue
        print(f"==> dagster dev exited with status {code}", flush=True)
        return code
    finally:
        signals.deferred = True  # a stop signal now only hurries the stop below
        try:
            _stop_tree(proc, write_fd, signals)
        finally:
            os.close(write_fd)


def _dies_with_parent():
    """On Linux, a ``preexec_fn`` making the child (``dagster dev``) receive SIGTERM when this process
    dies, even by SIGKILL (``PR_SET_PDEATHSIG``); ``dagster dev`` then stops its services as on any
    SIGTERM. (Its shutdown pipe closing is not enough: Dagster ignores the pipe's end of file.)
    None elsewhere. prctl is looked up before the fork: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before prctl took effect: nothing to serve
            os._exit(1)

    return preexec


def _stop_embedded(stop, pgdata: Path) -> None:
    others = _other_sessions(pgdata)
    if others:  # another command (a demo, psql, a run from ui.env's shell) still works on it
        print(
            f"==> the embedded PostgreSQL this command started ({pgdata}) is left running: {others} other "
            'connection(s) use it (stop it later: ./dev python -c "from pipelines.warehouse.db import '
            'stop_embedded_server; stop_embedded_server()")',
            flush=True,
        )
        return
    if stop(pgdata):
        print(f"==> stopped the embedded PostgreSQL this command started ({pgdata})", flush=True)


def _other_sessions(pgdata: Path) -> int:
    """Client connections to the embedded server of ``pgdata`` other than the one asking (0 when
    it does not run or cannot be asked)."""
    import psycopg

    from .warehouse.embedded import SUPERUSER, _postmaster, server_url

    info = _postmaster(pgdata)
    if info is None:
        return 0
    try:
        with psycopg.connect(server_url(info, pgdata, SUPERUSER), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()"
            ).fetchone()
    except psycopg.Error:
        return 0
    return int(row[0]) if row else 0


def _remove_if_ours(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            path.unlink()
