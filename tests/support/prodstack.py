"""A production-like Dagster deployment made of real processes, for the end-to-end tests
(``tests/e2e``, fixture ``prod_stack``) and for ``deploy/measure_backfill.py``.

:class:`ProdStack` starts the Taptouch sandbox over HTTP (``taptouch-sandbox serve``), writes a
DAGSTER_HOME whose ``dagster.yaml`` is ``deploy/dagster.yaml`` with only its limits changed, and
runs ``dagster-webserver`` and ``dagster-daemon run`` against it, exactly as
``deploy/local-prod.sh`` does. Every process is started in a session of its own and its whole
process group (the code servers and run workers it spawned) is killed on exit, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository
BIN = Path(sys.executable).parent
DEPLOY_DAGSTER_YAML = ROOT / "deploy" / "dagster.yaml"
LOCATION = "pipelines.definitions"  # the code location's name for `-w workspace.yaml`
REPOSITORY = "__repository__"
API_POOL = "taptouch_api"

# The sandbox's data: STORES stores, DAYS days of orders ending END (fixed, so the data is too).
END = date(2026, 11, 27)
DAYS = 20
STORES = 3
SEED = 5
ORDERS_PER_DAY = 30
START_DATE = END - timedelta(days=DAYS)  # first `orders` partition in this deployment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def derived_dagster_yaml(
    pool_limit: int, backfill_runs: int | None = None, max_concurrent_runs: int | None = None
) -> dict:
    """deploy/dagster.yaml with the `taptouch_api` pool limit (and optionally the backfill-run and
    total-run limits) replaced; everything else (storage from DAGSTER_PG_URL, queue, retention) as is."""
    config = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())
    config["concurrency"]["pools"]["default_limit"] = pool_limit
    if backfill_runs is not None:
        for limit in config["concurrency"]["runs"]["tag_concurrency_limits"]:
            if limit["key"] == "dagster/backfill":
                limit["limit"] = backfill_runs
    if max_concurrent_runs is not None:
        config["concurrency"]["runs"]["max_concurrent_runs"] = max_concurrent_runs
    return config


def dagster_pg_url(url: str) -> str:
    """``url`` with the ``postgresql+psycopg2://`` scheme dagster-postgres needs: SQLAlchemy 2.1
    maps a bare ``postgresql://`` to psycopg 3, on which dagster-postgres's ``NOTIFY run_events, %s``
    fails. A unix-socket URL (``...@/db?host=/dir``, the embedded server's form) works as it is:
    SQLAlchemy's psycopg2 dialect passes ``host=`` on to libpq."""
    _, _, rest = url.partition("://")
    return "postgresql+psycopg2://" + rest


class Graphql:
    """The GraphQL endpoint the UI itself uses."""

    def __init__(self, base_url: str):
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def __call__(self, query: str, **variables: Any) -> dict:
        response = self.http.post("/graphql", json={"query": query, "variables": variables})
        if response.status_code >= 400 and not response.headers.get("content-type", "").startswith("application/json"):
            raise AssertionError(f"GraphQL HTTP {response.status_code}: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def close(self) -> None:
        self.http.close()


@dataclass
class ProdStack:
    """Sandbox + dagster-webserver + dagster-daemon on a Postgres-backed DAGSTER_HOME."""

    workdir: Path
    dagster_pg_url: str
    warehouse_url: str
    pool_limit: int = 2
    partitions_per_run: int = 2
    backfill_runs: int | None = None
    max_concurrent_runs: int | None = None
    requests_per_second: float = 10.0
    sandbox_latency: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    sandbox_url: str = ""
    webserver_url: str = ""

    # -- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def start(self) -> ProdStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAPTOUCH_"))}
        self._start_sandbox(base_env)
        home = self.workdir / "dagster_home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(
            yaml.safe_dump(
                derived_dagster_yaml(self.pool_limit, self.backfill_runs, self.max_concurrent_runs), sort_keys=False
            )
        )
        self.env = {
            **base_env,
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "TAPTOUCH_BASE_URL": self.sandbox_url,
            "TAPTOUCH_CLIENT_ID": "sandbox-client",
            "TAPTOUCH_CLIENT_SECRET": "sandbox-secret",
            "TAPTOUCH_DATABASE_URL": self.warehouse_url,
            "TAPTOUCH_START_DATE": START_DATE.isoformat(),
            "TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN": str(self.partitions_per_run),
            "TAPTOUCH_REQUESTS_PER_SECOND": str(self.requests_per_second),
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        port = free_port()
        self.webserver_url = f"http://127.0.0.1:{port}"
        self._spawn(
            "webserver",
            [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            self.env,
        )
        self._spawn("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], self.env)
        self.gql = Graphql(self.webserver_url)
        self._wait_for_webserver()
        return self

    def _start_sandbox(self, env: dict[str, str]) -> None:
        argv = [
            str(BIN / "python"),
            "-m",
            "taptouch_sandbox",
            "serve",
            "--port",
            "0",
            "--seed",
            str(SEED),
            "--stores",
            str(STORES),
            "--days",
            str(DAYS),
            "--orders-per-day",
            str(ORDERS_PER_DAY),
            "--end-date",
            END.isoformat(),
        ]
        if self.sandbox_latency:
            argv += ["--latency", str(self.sandbox_latency)]
        proc = self._spawn("sandbox", argv, {**env, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"serving (http://\S+)", self.log("sandbox"))
            if match:
                self.sandbox_url = match.group(1)
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the sandbox did not start:\n{self.log('sandbox')}")

    def _wait_for_webserver(self, timeout: float = 180) -> None:
        """Until GraphQL answers and the code location has loaded."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name in ("webserver", "daemon"):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"dagster-{name} exited:\n{self.log(name)}")
            try:
                data = self.gql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                    name locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
                entries = data["workspaceOrError"]["locationEntries"]
                states = {e["name"]: e["locationOrLoadError"] for e in entries}
                loc = states.get(LOCATION)
                if loc and loc["__typename"] == "RepositoryLocation":
                    return
                if loc and loc["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {loc['message']}")
                last = str(states)
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise RuntimeError(f"the webserver did not become ready ({last}):\n{self.log('webserver')}")

    def stop(self) -> None:
        """SIGTERM each process group, then SIGKILL what is left. Safe to call twice."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            # the group may hold children (code servers, run workers) even after the leader exits
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=10)
        if getattr(self, "gql", None):
            self.gql.close()

    def __enter__(self) -> ProdStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- GraphQL operations ---------------------------------------------------------------------

    def launch_job(self, job: str) -> str:
        """Submit a job run (queued; the daemon launches it) through dagster-graphql's client."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=int(self.webserver_url.rsplit(":", 1)[1]))
        return client.submit_job_execution(job, repository_location_name=LOCATION, repository_name=REPOSITORY)

    def wait_for_run(self, run_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.gql(
                """query($id: ID!) { runOrError(runId: $id) { __typename
                ... on Run { runId status startTime endTime } } }""",
                id=run_id,
            )["runOrError"]
            if run.get("status") in ("SUCCESS", "FAILURE", "CANCELED"):
                return run
            time.sleep(1)
        raise TimeoutError(f"run {run_id} did not finish in {timeout}s:\n{self.log('daemon')}")

    def launch_backfill(self, asset: str, partitions: list[str], title: str = "") -> str:
        """An asset backfill, as the UI's "Materialize selected" dialog launches it."""
        result = self.gql(
            """mutation($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message stack }
                ... on PartitionKeysNotFoundError { message }
                ... on InvalidSubsetError { message }
                ... on UnauthorizedError { message }
                ... on RunConflict { message }
                ... on ConflictingExecutionParamsError { message }
                ... on InvalidStepError { invalidStepKey }
                ... on InvalidOutputError { invalidOutputName }
              } }""",
            params={"assetSelection": [{"path": [asset]}], "partitionNames": partitions, "title": title or None},
        )["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"backfill was not launched: {result}")
        return result["backfillId"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            backfill = self.backfill(backfill_id)
            if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
                return backfill
            time.sleep(1)
        raise TimeoutError(f"backfill {backfill_id} did not finish in {timeout}s:\n{self.log('daemon')}")

    def backfill(self, backfill_id: str) -> dict:
        data = self.gql(
            """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
              ... on PartitionBackfill { id status numPartitions partitionNames startTime endTime
                  runs { runId status startTime endTime tags { key value } }
                  error { message } }
              ... on PythonError { message } } }""",
            id=backfill_id,
        )["partitionBackfillOrError"]
        if data["__typename"] != "PartitionBackfill":
            raise AssertionError(f"backfill {backfill_id}: {data}")
        return data

    def schedules(self) -> dict[str, dict]:
        data = self.gql(
            """query($sel: RepositorySelector!) { schedulesOrError(repositorySelector: $sel) {
              __typename ... on PythonError { message } ... on RepositoryNotFoundError { message } ... on Schedules { results { name cronSchedule executionTimezone
                  scheduleState { status } } } } }""",
            sel={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY},
        )
        result = data["schedulesOrError"]
        if result["__typename"] != "Schedules":
            raise AssertionError(f"schedules: {result}")
        return {s["name"]: s for s in result["results"]}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that hold at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])  # -1 sorts first: [start, end)
    depth = best = 0
    for _, delta in events:
        depth += delta
        best = max(best, depth)
    return best


def chromium_binary() -> str | None:
    """Debian's chromium, installed with apt-get when missing; None when that is impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=900)
    return shutil.which("chromium") or shutil.which("chromium-browser")
