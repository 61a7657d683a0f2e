"""What an empty run's start-up no longer pays for (issue 23, item 3; docs/performance.md,
"Start-up"): loading the code location imports neither pandas nor SQLAlchemy and touches no
database, and the code location's executor starts step processes from a fork server that has
the code location loaded, unless a run's config asks otherwise. The timings themselves come from
``bench/startup_bench.py``, never from a test."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import defs
from pipelines.executor import PRELOAD, default_executor, forkserver_by_default, instance_modules

ROOT = Path(__file__).resolve().parents[2]
HAS_FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()


def _fresh_import(code: str, env: dict[str, str]) -> dict:
    """Run ``code`` after ``import pipelines.definitions`` in a fresh interpreter; its JSON output."""
    script = f"import json, sys\nimport pipelines.definitions\n{code}"
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_the_code_location_imports_no_dataframe_or_orm_library():
    loaded = _fresh_import(
        "print(json.dumps([m for m in ('pandas', 'numpy', 'sqlalchemy', 'matplotlib') if m in sys.modules]))",
        dict(os.environ),
    )
    assert loaded == []


def test_loading_the_code_location_touches_no_database(tmp_path):
    """With the warehouse unreachable and the embedded server's data directory absent, the
    definitions still load, and nothing was started or created."""
    pgdata = tmp_path / "pgdata"
    env = {
        **os.environ,
        "TAPTOUCH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nowhere",  # port 1: nothing listens
        "TAPTOUCH_PGDATA": str(pgdata),
    }
    got = _fresh_import(
        "from pipelines.warehouse import resource\n"
        "print(json.dumps({'migrated': len(resource._migrated), 'assets': len(list(pipelines.definitions.defs.assets))}))",
        env,
    )
    assert got == {"migrated": 0, "assets": len(list(defs.assets or []))}
    assert not pgdata.exists()
    env.pop("TAPTOUCH_DATABASE_URL")  # the embedded server is the default: still not started
    _fresh_import("print(json.dumps(None))", env)
    assert not pgdata.exists()


@pytest.mark.skipif(not HAS_FORKSERVER, reason="this platform has no fork server: spawn, as before")
def test_a_run_without_a_start_method_forks_its_steps_from_a_server_preloading_the_code_location():
    preload = [*PRELOAD, "dagster._core.storage.runs"]
    assert forkserver_by_default({"multiprocess": {"max_concurrent": 2}}, preload) == {
        "multiprocess": {
            "max_concurrent": 2,
            "start_method": {"forkserver": {"preload_modules": ["dagster", "pipelines.definitions", *preload[2:]]}},
        }
    }


def test_a_runs_own_start_method_and_the_in_process_mode_are_kept():
    spawn = {"multiprocess": {"start_method": {"spawn": {}}}}
    server = {"multiprocess": {"start_method": {"forkserver": {"preload_modules": ["dagster"]}}}}
    in_process = {"in_process": {"retries": {"enabled": {}}}}
    for config in (spawn, server, in_process):
        assert forkserver_by_default(config) == config


def test_every_job_runs_on_the_default_executor_with_dagsters_run_config(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "id")  # the resources' EnvVars resolve when config is validated
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "secret")
    repo = defs.get_repository_def()
    jobs = repo.get_all_jobs()
    assert jobs and all(job.executor_def is default_executor for job in jobs)
    assert default_executor.name == dg.multi_or_in_process_executor.name
    job = repo.get_implicit_global_asset_job_def()
    for execution in (
        {"multiprocess": {"max_concurrent": 2}},
        {"multiprocess": {"start_method": {"spawn": {}}}},
        {"multiprocess": {"start_method": {"forkserver": {}}}},
        {"in_process": {}},
    ):
        assert dg.validate_run_config(job, {"execution": {"config": execution}}) is not None


def test_the_fork_server_preloads_the_modules_of_the_instances_storages(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        modules = instance_modules(instance)
    assert "dagster._core.storage.runs" in modules and "dagster._core.storage.event_log" in modules
    with dg.DagsterInstance.ephemeral() as ephemeral:
        assert instance_modules(ephemeral) == []
