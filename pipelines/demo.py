"""The one-command demo and the local UI, on the embedded defaults.

``taptouch-sync demo`` starts the sandbox Taptouch API over HTTP on a free port and the embedded
PostgreSQL, then runs the real Dagster assets on a persistent local Dagster instance
(``.taptouch/dagster_home``, so ``taptouch-sync ui`` shows the same runs afterwards):

1. ``stores`` and ``inventory``;
2. ``orders`` for the last N days as one ranged run over the partitions — the run a UI backfill
   launches under the asset's ``BackfillPolicy``;
3. the analytics views;

and prints a summary per store and day. Running it again is safe: every load is idempotent.

``taptouch-sync demo --accounts`` shows two Taptouch accounts in one deployment: one sandbox server
with two clients (``north``: 3 stores, ``south``: 2 stores), ``TAPTOUCH_ACCOUNTS=north,south``,
each account's assets (``north/orders`` ...) as its own runs, the shared views, and a summary
per account from one query.

The sandbox is used only because this command says so, and it says so on screen. With the
``TAPTOUCH_*`` variables set, the assets use them and never fall back to the sandbox.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from .warehouse.db import project_root, redact_url, resolve_database_url

SANDBOX_DAYS = 30
SANDBOX_STORES = 3


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
        with _exported({"TAPTOUCH_BASE_URL": url, "TAPTOUCH_CLIENT_ID": sb.config.client_id,
                        "TAPTOUCH_CLIENT_SECRET": sb.config.client_secret}):
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
            values.update({f"TAPTOUCH_{name.upper()}_BASE_URL": url,
                           f"TAPTOUCH_{name.upper()}_CLIENT_ID": sb.config.client_id,
                           f"TAPTOUCH_{name.upper()}_CLIENT_SECRET": sb.config.client_secret})
        described = ", ".join(f"{name}: stores {', '.join(map(str, sb.store_ids()))}" for name, sb in members.items())
        print(f"==> sandbox Taptouch API (fake, deterministic data, {days} days) at {url}, two clients: {described}")
        with _exported(values):
            yield url


def _run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _start(title: str):
    """The demo's Dagster instance (owner-only, under .taptouch/) and warehouse, announced."""
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    import dagster as dg

    t0 = time.monotonic()
    print(f"==> {title}")
    url = resolve_database_url()
    print(f"==> warehouse: {redact_url(url)}")
    instance = dg.DagsterInstance.get()
    print(f"==> Dagster instance: {os.environ['DAGSTER_HOME']}")
    return t0, url, instance


def run_demo(days: int = 7, accounts: bool = False) -> int:
    if accounts:
        return run_accounts_demo(days)
    t0, url, instance = _start("taptouch-sync demo: sandbox API + embedded PostgreSQL + Dagster, end to end")
    import dagster as dg

    from .assets.analytics import analytics_assets
    from .definitions import RESOURCES, defs
    from .warehouse.resource import PostgresResource

    with sandbox_env():
        today = datetime.now(timezone.utc).date()
        first = today - timedelta(days=days - 1)
        # partitions are UTC days; business dates are local (up to UTC+13 here): load one more day
        first_partition = first - timedelta(days=1)
        defs.get_repository_def()  # the same code location the UI and the CLI load
        from .assets.taptouch import inventory, orders, stores

        print("==> [1/3] stores and inventory")
        _check(dg.materialize([stores, inventory], instance=instance, resources=RESOURCES, run_config=_run_config(),
                              tags={"source": "demo"}))
        print(f"==> [2/3] orders, partitions {first_partition} .. {today} (one ranged backfill run)")
        _check(dg.materialize(
            [orders], instance=instance, resources=RESOURCES, run_config=_run_config(),
            tags={"dagster/asset_partition_range_start": first_partition.isoformat(),
                  "dagster/asset_partition_range_end": today.isoformat(), "source": "demo"},
        ))
        print("==> [3/3] analytics views")
        _check(dg.materialize([*analytics_assets], instance=instance, resources=RESOURCES, run_config=_run_config(),
                              tags={"source": "demo"}))
    print_summary(PostgresResource(database_url=url), first, today)
    print(f"\nDone in {time.monotonic() - t0:.0f}s. Running it again is safe (nothing is duplicated).")
    print("Explore the same data:")
    print("  ./dev ui                         # Dagster UI on http://127.0.0.1:3000 (runs, assets, checks, schedules)")
    print("  ./dev taptouch-sync db-url       # the database URL and the psql command")
    print('  psql "$(./dev taptouch-sync db-url --raw)" -c "select * from analytics.daily_store_sales"')
    return 0


def run_accounts_demo(days: int = 7) -> int:
    """The demo with two accounts in one deployment: each account's stores, inventory and orders
    as its own runs, then the shared analytics views, and a per-account summary."""
    t0, url, instance = _start("taptouch-sync demo --accounts: two Taptouch accounts, one deployment, one warehouse")
    import dagster as dg

    from .warehouse.resource import PostgresResource

    with sandbox_accounts_env():
        from . import definitions  # loaded now: TAPTOUCH_ACCOUNTS is set

        today = datetime.now(timezone.utc).date()
        first = today - timedelta(days=days - 1)
        first_partition = first - timedelta(days=1)
        assets = list(definitions.defs.assets)
        for account in definitions.ACCOUNTS:
            print(f"==> [{account.name}] {account.key_string('stores')} and {account.key_string('inventory')}")
            _check(dg.materialize(assets, instance=instance, resources=definitions.RESOURCES, run_config=_run_config(),
                                  selection=[account.key("stores"), account.key("inventory")], tags={"source": "demo"}))
            print(f"==> [{account.name}] {account.key_string('orders')}, partitions {first_partition} .. {today}"
                  " (one ranged backfill run)")
            _check(dg.materialize(
                assets, instance=instance, resources=definitions.RESOURCES, run_config=_run_config(),
                selection=[account.key("orders")],
                tags={"dagster/asset_partition_range_start": first_partition.isoformat(),
                      "dagster/asset_partition_range_end": today.isoformat(), "source": "demo"},
            ))
        print("==> analytics views (shared: every account's rows, with their account)")
        _check(dg.materialize(assets, instance=instance, resources=definitions.RESOURCES, run_config=_run_config(),
                              selection=dg.AssetSelection.groups("analytics"), tags={"source": "demo"}))
    print_accounts_summary(PostgresResource(database_url=url), first, today)
    print(f"\nDone in {time.monotonic() - t0:.0f}s. Running it again is safe (nothing is duplicated).")
    print("Explore the same data:")
    print("  ./dev ui --sandbox --accounts    # Dagster UI with both accounts' assets (north/..., south/...)")
    print('  psql "$(./dev taptouch-sync db-url --raw)" -c "select account, business_date, sum(net_sales)'
          ' from analytics.daily_store_sales group by account, business_date order by business_date, account"')
    return 0


def print_accounts_summary(warehouse, first: date, last: date) -> None:
    """Orders and net sales per account and business date, from one query over both accounts."""
    from .assets.preview import read_frame

    frame = read_frame(
        warehouse,
        "select account, business_date as date, count(distinct store_id) as stores, sum(order_count)::integer as orders,"
        " sum(net_sales) as net_sales from analytics.daily_store_sales"
        " where business_date between :first and :last group by account, business_date"
        " order by business_date, account",
        first=first, last=last,
    )
    print(f"\nanalytics.daily_store_sales per account, business dates {first} .. {last}:")
    print(frame.to_string(index=False, justify="left", formatters={"net_sales": lambda v: f"{v:>12,.2f}"}))


def _check(result) -> None:
    if not result.success:
        raise SystemExit("demo: a Dagster run failed; see the log above")


SUMMARY_TABLES = ("stores", "orders", "order_items", "order_payments", "order_refunds", "inventory_levels")


def print_summary(warehouse, first: date, last: date) -> None:
    """Row counts, then orders and net sales per store and business date (pandas through the
    warehouse's SQLAlchemy engine; ``warehouse`` is a ``PostgresResource``)."""
    from .assets.preview import read_frame

    counts = read_frame(warehouse, " union all ".join(
        f"select '{t}' as table_name, count(*) as n from taptouch.{t}" for t in SUMMARY_TABLES)
        + " union all select 'quarantined', count(*) from taptouch.quarantine where resolved_at is null")
    sales = read_frame(
        warehouse,
        "select store_id as store, store_name as name, business_date as date, order_count as orders,"
        " net_sales from analytics.daily_store_sales where business_date between :first and :last"
        " order by store_id, business_date",
        first=first, last=last,
    )
    print("\nWhat the warehouse holds:")
    print("  " + ", ".join(f"{r.table_name} {r.n}" for r in counts.itertuples()))
    print(f"\nanalytics.daily_store_sales, business dates {first} .. {last}:")
    sales["name"] = sales["name"].fillna("").str.slice(0, 28)
    print(sales.to_string(index=False, justify="left", formatters={
        "name": lambda v: f"{v:<28}", "net_sales": lambda v: f"{v:>12,.2f}"}))


def run_ui(sandbox: bool, port: int = 3000, host: str = "127.0.0.1", accounts: bool = False) -> int:
    """``dagster dev`` on this code location and the local instance (optionally with the sandbox,
    ``accounts``: the two-account sandbox and TAPTOUCH_ACCOUNTS=north,south)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions", "-h", host, "-p", str(port)]
    env = (sandbox_accounts_env() if accounts else sandbox_env()) if sandbox else contextlib.nullcontext()
    with env:
        if not sandbox and not os.environ.get("TAPTOUCH_CLIENT_ID") and not os.environ.get("TAPTOUCH_ACCOUNTS"):
            print("note: TAPTOUCH_CLIENT_ID is not set; runs will fail until it is (or use --sandbox).")
        print(f"==> Dagster UI on http://{host}:{port} (Ctrl-C to stop)")
        proc = subprocess.Popen(cmd, cwd=project_root())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()
