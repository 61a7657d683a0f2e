"""bench/sync_bench.py --scenario busy-day at a tiny size (about 300 orders in the day): the scenario
runs end to end against a real server, prints its table, and every loading contender (in process
and through ``dagster asset materialize``) ends holding exactly the orders the sandbox's window
holds. dlt is left out (the bench extra is optional)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from taptouch_sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_bench", ROOT / "bench" / "sync_bench.py")
assert _spec is not None and _spec.loader is not None
sync_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_bench)  # the bench is a script: its constants, read from its file

ORDERS = 300


def window_truth() -> int:
    """The orders the sandbox the bench starts serves in the busy day's window, counted in process."""
    config = SandboxConfig(
        seed=sync_bench.SEED,
        stores=sync_bench.BUSY_STORES,
        days=sync_bench.BUSY_SANDBOX_DAYS,
        orders_per_day=sync_bench.busy_orders_per_day(ORDERS),
        end_date=sync_bench.END_DATE,
    )
    sb = Sandbox(config)
    start = datetime.combine(sync_bench.BUSY_DAY, time(0), UTC)
    return sum(len(sb.orders_in_window(sid, start, start + timedelta(days=1))) for sid in sb.store_ids())


@pytest.mark.slow
def test_the_busy_day_scenario_loads_the_whole_window_in_process_and_through_dagster(pg_admin_url, tmp_path):
    out = tmp_path / "busy.json"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "sync_bench.py"),
            "--scenario",
            "busy-day",
            "--orders",
            str(ORDERS),
            "--contenders",
            "api",
            "ours",
            "ours-dagster",
            "--database-url",
            pg_admin_url,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "orders/s after start-up" in done.stdout and "ours-dagster/API ceiling" in done.stdout

    results = json.loads(out.read_text())[str(ORDERS)]
    expected = window_truth()
    assert 200 < expected < 400  # about the orders asked for
    assert results["api"]["orders"] == expected
    for name in ("ours", "ours-dagster"):
        r = results[name]
        assert r["counts"]["orders"] == expected, name
        assert r["counts"]["items"] > expected and r["counts"]["payments"] > 0, name
        assert r["startup_s"] > 0 and r["load_s"] > 0 and r["peak_rss_mb"] > 0, name
    timing = results["ours-dagster"]["timing"]
    phases = ["spawned_at", "run_at", "step_at", "load_at", "merged_at", "step_done_at", "run_done_at", "ended_at"]
    assert [timing[p] for p in phases] == sorted(timing[p] for p in phases)  # the run's phases in order
    assert results["ours"]["timing"]["backend_cpu_s"] is None or results["ours"]["timing"]["backend_cpu_s"] >= 0
