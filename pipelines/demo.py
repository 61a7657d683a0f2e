"""The one-command demo and the local UI, on the embedded defaults.

``taptouch-sync demo`` starts the sandbox Taptouch API over HTTP on a free port and the embedded
PostgreSQL, then runs the real Dagster assets on a persistent local Dagster instance
(``.taptouch/dagster_home``, so ``taptouch-sync ui`` shows the same runs afterwards):

1. ``stores`` and ``inventory``;
2. ``orders`` for the last N days as one ranged run over the partitions — the run a UI backfill
   launches under the asset's ``BackfillPolicy``;
3. the analytics views;

and prints a summary per store and day. Running it again is safe: every load is idempotent.

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
        saved = {k: os.environ.get(k) for k in ("TAPTOUCH_BASE_URL", "TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET")}
        os.environ.update({"TAPTOUCH_BASE_URL": url, "TAPTOUCH_CLIENT_ID": sb.config.client_id,
                           "TAPTOUCH_CLIENT_SECRET": sb.config.client_secret})
        print(f"==> sandbox Taptouch API (fake, deterministic data: {stores} stores, {days} days) at {url}")
        try:
            yield url
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_demo(days: int = 7) -> int:
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    import dagster as dg

    from .assets.analytics import analytics_assets
    from .definitions import RESOURCES, defs
    from .warehouse.resource import PostgresResource

    t0 = time.monotonic()
    print("==> taptouch-sync demo: sandbox API + embedded PostgreSQL + Dagster, end to end")
    url = resolve_database_url()
    print(f"==> warehouse: {redact_url(url)}")
    instance = dg.DagsterInstance.get()
    print(f"==> Dagster instance: {os.environ['DAGSTER_HOME']}")
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


def run_ui(sandbox: bool, port: int = 3000, host: str = "127.0.0.1") -> int:
    """``dagster dev`` on this code location and the local instance (optionally with the sandbox)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home())
    cmd = [sys.executable, "-m", "dagster", "dev", "-m", "pipelines.definitions", "-h", host, "-p", str(port)]
    with (sandbox_env() if sandbox else contextlib.nullcontext()):
        if not sandbox and not os.environ.get("TAPTOUCH_CLIENT_ID"):
            print("note: TAPTOUCH_CLIENT_ID is not set; runs will fail until it is (or use --sandbox).")
        print(f"==> Dagster UI on http://{host}:{port} (Ctrl-C to stop)")
        proc = subprocess.Popen(cmd, cwd=project_root())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return proc.wait()
