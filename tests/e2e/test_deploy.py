"""The production deployment end to end: deploy/dagster.yaml on a Postgres-backed instance, with
dagster-webserver and dagster-daemon as real processes, a backfill launched through the GraphQL API
the UI uses, the warehouse compared with the sandbox's truth, and the UI in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta

import dagster as dg
import psycopg
import pytest
import yaml

from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth
from tests.support.prodstack import (
    API_POOL,
    DAYS,
    DEPLOY_DAGSTER_YAML,
    END,
    ORDERS_PER_DAY,
    SEED,
    STORES,
    ProdStack,
    chromium_binary,
    max_overlap,
)

POOL_LIMIT = 2
PARTITIONS_PER_RUN = 2
BACKFILL = [(END - timedelta(days=d)).isoformat() for d in range(12, 0, -1)]  # 12 days ending the day before END


SCHEDULES = {"orders_hourly", "orders_reconcile_daily", "stores_daily", "inventory_hourly", "merchant_tokens_keepalive"}


def test_the_code_location_defines_the_schedules_the_daemon_runs():
    from pipelines.definitions import defs

    assert {s.name for s in defs.get_repository_def().schedule_defs} == SCHEDULES


def truth_sandbox() -> Sandbox:
    """The same data the HTTP sandbox serves (it is a pure function of the config)."""
    return Sandbox(SandboxConfig(seed=SEED, stores=STORES, days=DAYS, end_date=END, orders_per_day=ORDERS_PER_DAY))


def test_deploy_dagster_yaml_is_a_valid_production_instance_config(monkeypatch):
    """The file itself: Postgres storage from the environment, a run queue, the API pool limited."""
    from dagster._core.instance.config import dagster_instance_config

    config = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["granularity"] == "run"
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    assert config["concurrency"]["runs"]["max_concurrent_runs"] >= config["concurrency"]["pools"]["default_limit"]
    with tempfile.TemporaryDirectory() as home:
        shutil.copy(DEPLOY_DAGSTER_YAML, f"{home}/dagster.yaml")
        monkeypatch.setenv("DAGSTER_PG_URL", "postgresql+psycopg2://u@localhost/db")  # not connected: only parsed
        validated, _ = dagster_instance_config(home)  # raises on any key Dagster does not know
    assert validated["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert validated["concurrency"]["pools"]["default_limit"] == config["concurrency"]["pools"]["default_limit"]


@pytest.mark.slow
def test_backfill_on_the_production_instance(prod_stack, tmp_path):
    stack: ProdStack = prod_stack(pool_limit=POOL_LIMIT, partitions_per_run=PARTITIONS_PER_RUN)

    # The schedules are registered with the daemon's instance (and stopped until someone starts them).
    schedules = stack.schedules()
    assert set(schedules) == SCHEDULES
    assert all(s["executionTimezone"] == "UTC" for s in schedules.values())

    # stores once, as a queued job run the daemon launches.
    run = stack.wait_for_run(stack.launch_job("stores_job"))
    assert run["status"] == "SUCCESS", stack.log("daemon")

    # A backfill of 12 daily partitions, launched as the UI launches it.
    backfill_id = stack.launch_backfill("orders", BACKFILL, title="e2e backfill")
    backfill = stack.wait_for_backfill(backfill_id)
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), (backfill, stack.log("daemon"))
    runs = backfill["runs"]
    assert runs and all(r["status"] == "SUCCESS" for r in runs), runs
    # max_partitions_per_run=2 -> 6 runs for 12 partitions: the limit had something to limit.
    assert len(runs) == len(BACKFILL) // PARTITIONS_PER_RUN

    # Every partition materialized, as the instance (the same Postgres storage) records it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_PG_URL", stack.dagster_pg_url)
        with dg.DagsterInstance.from_config(str(stack.workdir / "dagster_home")) as instance:
            materialized = instance.get_materialized_partitions(dg.AssetKey("orders"))
            records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            limits = instance.event_log_storage.get_pool_limits()
    assert materialized == set(BACKFILL)

    # The configured concurrency was never exceeded: at most POOL_LIMIT runs held the API at once.
    intervals = [(r.start_time, r.end_time) for r in records]
    assert len(intervals) == len(runs) and all(s and e and s < e for s, e in intervals), intervals
    overlap = max_overlap(intervals)
    assert 1 <= overlap <= POOL_LIMIT, intervals
    assert {p.name: p.limit for p in limits}.get(API_POOL) == POOL_LIMIT

    # The warehouse equals the sandbox's truth for those days.
    sb = truth_sandbox()
    want = truth.orders_updated_in_days(sb, BACKFILL)
    assert len(want) > 100
    with psycopg.connect(stack.warehouse_url) as conn:
        got = {
            r[0]: r[1:]
            for r in conn.execute("select order_id, updated_at, status, total from taptouch.orders").fetchall()
        }
        children = {
            name: dict(conn.execute(f"select order_id, count(*) from taptouch.{name} group by order_id").fetchall())
            for name in ("order_items", "order_payments", "order_refunds")
        }
        stores = dict(conn.execute("select store_id, name from taptouch.stores").fetchall())
    assert stores == {s["id"]: s["name"] for s in sb.stores()}
    assert set(got) == set(want)
    for oid, o in want.items():
        assert got[oid] == (datetime.fromisoformat(o["updated_at"]), o["status"], o["total"]), oid
        assert children["order_items"].get(oid, 0) == len(o["items"]), oid
        assert children["order_payments"].get(oid, 0) == len(o["payments"]), oid
        assert children["order_refunds"].get(oid, 0) == len(o["refunds"]), oid

    # The UI in a real browser: the orders asset's partitions page.
    screenshot_orders_page(stack, tmp_path / "ui-orders.png")


def screenshot_orders_page(stack: ProdStack, png) -> None:
    chromium = chromium_binary()
    if chromium is None:
        pytest.skip("Chromium is not installed and `apt-get install chromium` failed: UI screenshot not taken")
    # Dismiss the first-visit "Join the Dagster community" dialog the way its Skip button does,
    # so the screenshot shows the page, not the dialog over it.
    assert stack.gql("mutation { setNuxSeen }")["setNuxSeen"] is True
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--window-size=1400,900",
                f"--screenshot={png}",
                f"{stack.webserver_url}/assets/orders?view=partitions",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert png.exists() and png.stat().st_size > 20_000, "the screenshot is missing or nearly empty"
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (900, 1400)
    rgb = pixels[..., :3].reshape(-1, 3)
    # Not a blank page: many distinct colours (text, the partition bar's green squares).
    distinct = {tuple(p) for p in (rgb[::97] * 255).astype(int).tolist()}
    assert len(distinct) > 20, f"the page looks blank ({len(distinct)} colours)"
    greens = ((rgb[:, 1] > rgb[:, 0] + 0.15) & (rgb[:, 1] > rgb[:, 2] + 0.05)).sum()
    assert greens > 200, "no materialized (green) partitions on the orders page"


# -- The Kubernetes files, checked without Docker or helm (neither runs here) --------------------

HELM_VALUES = DEPLOY_DAGSTER_YAML.parent / "helm" / "values.yaml"
DOCKERFILE = DEPLOY_DAGSTER_YAML.parent / "Dockerfile"


# Keys of Dagster's chart (helm/dagster/schema: DagsterHelmValues and its subschemas, chart 1.13)
# that these values may use; helm itself is not installable here, so a typo is caught this way.
CHART_KEYS = {
    "": {
        "global",
        "dagsterWebserver",
        "dagster-user-deployments",
        "postgresql",
        "generatePostgresqlPasswordSecret",
        "runLauncher",
        "dagsterDaemon",
        "concurrency",
        "pythonLogs",
        "retention",
        "telemetry",
        "computeLogManager",
        "ingress",
        "imagePullSecrets",
        "serviceAccount",
    },
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {
        "name",
        "image",
        "dagsterApiGrpcArgs",
        "codeServerArgs",
        "includeConfigInLaunchedRuns",
        "port",
        "env",
        "envConfigMaps",
        "envSecrets",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "labels",
        "volumeMounts",
        "volumes",
        "schedulerName",
    },
    "postgresql": {
        "image",
        "enabled",
        "postgresqlHost",
        "postgresqlUsername",
        "postgresqlPassword",
        "postgresqlDatabase",
        "postgresqlParams",
        "postgresqlScheme",
        "service",
    },
    "k8sRunLauncher": {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
        "labels",
        "failPodOnRunFailure",
        "resources",
        "schedulerName",
        "securityContext",
        "runK8sConfig",
    },
    "runK8sConfig": {"containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig", "jobMetadata"},
    "dagsterDaemon": {
        "enabled",
        "image",
        "runCoordinator",
        "heartbeatTolerance",
        "env",
        "envConfigMaps",
        "envSecrets",
        "deploymentLabels",
        "labels",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "annotations",
        "runMonitoring",
        "runRetries",
        "sensors",
        "schedules",
        "schedulerName",
        "volumeMounts",
        "volumes",
    },
    "queuedRunCoordinator": {
        "maxConcurrentRuns",
        "tagConcurrencyLimits",
        "dequeueIntervalSeconds",
        "dequeueNumWorkers",
        "dequeueUseThreads",
    },
    "concurrency": {"enabled", "pools", "runs"},
    "pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "retention": {"enabled", "sensor", "schedule", "autoMaterialize"},
    "tickRetentionByType": {"skipped", "success", "failure", "started"},
}


def test_helm_values_use_only_the_charts_keys():
    values = yaml.safe_load(HELM_VALUES.read_text())

    def within(section: str, mapping: dict) -> None:
        unknown = set(mapping) - CHART_KEYS[section]
        assert not unknown, f"keys the chart does not know under {section or 'the top level'}: {unknown}"

    within("", values)
    within("dagster-user-deployments", values["dagster-user-deployments"])
    for deployment in values["dagster-user-deployments"]["deployments"]:
        within("deployment", deployment)
    within("postgresql", values["postgresql"])
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    within("k8sRunLauncher", launcher)
    within("runK8sConfig", launcher["runK8sConfig"])
    within("dagsterDaemon", values["dagsterDaemon"])
    within("queuedRunCoordinator", values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"])
    within("concurrency", values["concurrency"])
    within("pools", values["concurrency"]["pools"])
    within("runs", values["concurrency"]["runs"])
    within("retention", values["retention"])
    for kind in ("schedule", "sensor"):
        days = values["retention"][kind]["purgeAfterDays"]
        if isinstance(days, dict):  # the chart wants all four tick statuses when given per status
            assert set(days) == CHART_KEYS["tickRetentionByType"], days


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return out


def test_helm_values_match_the_tested_instance_config():
    values = yaml.safe_load(HELM_VALUES.read_text())
    instance = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())

    # The same limits as deploy/dagster.yaml, in the chart's camelCase keys.
    conc = values["concurrency"]
    assert conc["enabled"] is True
    assert conc["pools"] == {
        "granularity": instance["concurrency"]["pools"]["granularity"],
        "defaultLimit": instance["concurrency"]["pools"]["default_limit"],
    }
    assert conc["runs"]["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert conc["runs"]["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    # Run limits live under `concurrency` only: Dagster rejects them in the run coordinator too.
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(coordinator["config"]["queuedRunCoordinator"])
    assert values["pythonLogs"]["managedPythonLoggers"] == instance["python_logs"]["managed_python_loggers"]
    assert values["retention"]["schedule"]["purgeAfterDays"] == instance["retention"]["schedule"]["purge_after_days"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"

    # The user deployment serves this repository's code location from the Dockerfile's image.
    ud = values["dagster-user-deployments"]
    assert ud["enabled"] is True
    (deployment,) = ud["deployments"]
    for key in ("name", "image", "dagsterApiGrpcArgs", "port"):
        assert key in deployment, key
    assert set(deployment["image"]) == {"repository", "tag", "pullPolicy"}
    workspace = yaml.safe_load((DEPLOY_DAGSTER_YAML.parents[1] / "workspace.yaml").read_text())
    assert deployment["dagsterApiGrpcArgs"] == ["-m", workspace["load_from"][0]["python_module"]]
    assert [e["name"] for e in deployment["envSecrets"]] == ["taptouch-secrets"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert all(isinstance(v, str) for v in env.values())  # Kubernetes env values are strings
    assert "TAPTOUCH_CLIENT_SECRET" not in env and "TAPTOUCH_DATABASE_URL" not in env  # secrets only

    # The Dockerfile builds that image: the packages, sql/, the pinned Dagster libraries, the port.
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and steps[0][1].startswith("python:3.11")
    assert set(kinds) <= {"FROM", "ARG", "ENV", "WORKDIR", "COPY", "RUN", "USER", "EXPOSE", "CMD"}
    copied = {args.split()[0].rstrip("/") for k, args in steps if k == "COPY"}
    assert {"pyproject.toml", "pipelines", "taptouch_resource", "sql", "workspace.yaml"} <= copied
    assert ("EXPOSE", str(deployment["port"])) in steps
    cmd = yaml.safe_load(dict(steps)["CMD"])  # exec form: a JSON list
    assert cmd[:3] == ["dagster", "api", "grpc"] and cmd[-2:] == deployment["dagsterApiGrpcArgs"]
    assert ("USER", "dagster") in steps
    pyproject = (DEPLOY_DAGSTER_YAML.parents[1] / "pyproject.toml").read_text()
    pg_pin = pyproject.split('"dagster-postgres==', 1)[1].split('"', 1)[0]
    assert ("ARG", f"DAGSTER_K8S_VERSION={pg_pin}") in steps  # dagster-k8s in lockstep with dagster-postgres


def test_local_prod_script_is_valid_bash():
    script = DEPLOY_DAGSTER_YAML.parent / "local-prod.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    # the instance's config is deploy/dagster.yaml, copied into DAGSTER_HOME; both processes run on it
    assert re.search(r'deploy/dagster\.yaml "\$DAGSTER_HOME/dagster\.yaml"', text), text
    assert "dagster-daemon" in text and "dagster-webserver" in text
