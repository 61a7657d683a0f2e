"""Start-up of an empty run through the Dagster CLI, next to a trivial asset's run (issue 23, item 3).

    ./dev python bench/startup_bench.py                        # the working tree, 5 runs each
    ./dev python bench/startup_bench.py --rev 1dce8ad --rev HEAD --runs 7 --json /tmp/startup.json

Times (median of ``--runs``) ``dagster asset materialize -m pipelines.definitions --select orders
--partition <a day with nothing to load>`` against the sandbox API over HTTP (its own process, as
``./dev demo`` serves it) and a freshly migrated warehouse of its own on the machine's PostgreSQL,
next to the same command on ``bench/trivial_definitions.py`` (one asset returning 1), each on a
Dagster instance of the kind ``./dev demo`` makes (its ``dagster.yaml``, a ``DAGSTER_HOME`` per
contender). The runs alternate (trivial, then each tree), after one untimed run each. Also timed:
``python -c 'import dagster'`` and ``python -c 'import pipelines.definitions'``.

Then where an empty run's time goes: the run's own event log (CLI start-up before the run's first
event, each step's process start-up, its resources and body, the end), a ``-X importtime`` summary
of the packages ``pipelines.definitions`` imports beyond Dagster's, and one fresh process's
definition building, migration check and resource set-up. Method and figures: bench/README.md,
"Start-up", and docs/performance.md, "Start-up".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
EMPTY_DAY = "2025-01-01"  # after TAPTOUCH_START_DATE's default, long before the sandbox's 30 days
DATABASE_PREFIX = "taptouch_startup_bench"
INSTANCE_YAML = """\
# as ./dev demo's local instance (pipelines/demo.py LOCAL_INSTANCE_YAML)
python_logs:
  managed_python_loggers: [taptouch_resource, pipelines]
  python_log_level: INFO
concurrency:
  pools:
    default_limit: 2
telemetry:
  enabled: false
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs of each command (median reported)")
    p.add_argument("--partition", default=EMPTY_DAY, help="an orders partition with nothing to load")
    p.add_argument("--rev", action="append", default=[], help="a git revision to measure (git archive); repeatable")
    p.add_argument("--database-url", help="admin URL of the PostgreSQL server (a database per tree is made)")
    p.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE as it is (default: byte-compiled modules cached in the bench's own "
        "PYTHONPYCACHEPREFIX, as an ordinary Python install does)",
    )
    p.add_argument("--json", help="write every figure here")
    p.add_argument("--keep", action="store_true", help="keep the databases and the work directory")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# the trees, their environments, the sandbox and the databases


def git_tree(rev: str, work: Path) -> tuple[str, Path]:
    """``rev`` of this repository extracted with ``git archive``: (short commit, directory)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    target = work / f"tree-{commit}"
    if not target.exists():
        target.mkdir()
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return commit, target


def worktree_label() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return head.stdout.strip() + ("+changes" if dirty.strip() else "")


def base_env(work: Path, bytecode_cache: bool) -> dict[str, str]:
    """The environment every timed command starts from: no TAPTOUCH_* or DAGSTER_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "DAGSTER_"))}
    env.pop("PYTHONPATH", None)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


def dagster_home(work: Path, name: str) -> Path:
    home = work / f"home-{name}"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    return home


class Sandbox:
    """``python -m taptouch_sandbox serve --port 0`` (3 stores, 30 days ending today) in its own process."""

    def __init__(self, env: dict[str, str]):
        self.env = {**env, "PYTHONPATH": str(ROOT)}
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Sandbox:
        cmd = [sys.executable, "-m", "taptouch_sandbox", "serve", "--port", "0", "--stores", "3", "--days", "30"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "serving http://" not in line:
            self.__exit__()
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.url = line.split("serving ", 1)[1].split()[0]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


def fresh_database(admin: str, name: str) -> str:
    import psycopg
    from psycopg import sql

    from pipelines.warehouse.db import libpq_url, with_database

    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return with_database(libpq_url(admin), name)


def drop_database(admin: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    from pipelines.warehouse.db import libpq_url

    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------------------------
# timing commands


WRAPPER = r"""
import ctypes, json, os, resource, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphaned descendants (a fork server) come here
cmd, log = json.loads(sys.argv[1]), sys.argv[2]
with open(log, "w") as out:
    started_at, t0 = time.time(), time.perf_counter()
    code = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT).wait()
    wall, ended_at = time.perf_counter() - t0, time.time()
while True:  # every descendant's CPU: wait for the ones still running (a fork server leaves with its parent)
    try:
        os.wait()
    except ChildProcessError:
        break
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"code": code, "wall_s": wall, "cpu_s": cpu, "started_at": started_at, "ended_at": ended_at}))
"""


def timed(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """Run ``cmd``: its wall seconds (until it exits), the CPU seconds of it and of every process it
    started (through a child subreaper: a fork server's steps too), and its exit code."""
    wrapper = [sys.executable, "-c", WRAPPER, json.dumps(cmd), str(log)]
    proc = subprocess.run(wrapper, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the timing wrapper failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout)
    if result.pop("code") != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; log {log}:\n{log.read_text()[-3000:]}")
    return result


def materialize_cmd(module: str, select: str, partition: str | None) -> list[str]:
    dagster = str(Path(sys.executable).with_name("dagster"))
    cmd = [dagster, "asset", "materialize", "-m", module, "--select", select]
    return cmd + (["--partition", partition] if partition else [])


_PHASES = (
    ("cli_startup_s", None, "first"),  # process start -> the run's first event
    ("run_s", "first", "PIPELINE_SUCCESS"),
    ("exit_s", "PIPELINE_SUCCESS", None),  # the run's last event -> the process's exit
)


def run_phases(home: Path, timing: dict) -> dict:
    """The latest run of the instance at ``home``, from its event log: the phases of :data:`_PHASES`
    and, per step, its process start-up (worker starting -> resources), resources and body."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        records = instance.all_logs(run.run_id)
    if run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"run {run.run_id} ended {run.status}")
    marks: dict[str, float] = {"first": records[0].timestamp}
    steps: dict[str, dict[str, float]] = {}
    for r in records:
        kind = r.dagster_event.event_type_value if r.dagster_event else None
        marks.setdefault(kind or "", r.timestamp)
        if r.step_key and kind in ("STEP_WORKER_STARTING", "RESOURCE_INIT_STARTED", "STEP_START", "STEP_SUCCESS"):
            steps.setdefault(r.step_key, {}).setdefault(kind, r.timestamp)
    phases: dict[str, float] = {
        name: (marks[end] if end else timing["ended_at"]) - (marks[start] if start else timing["started_at"])
        for name, start, end in _PHASES
    }
    for key, s in steps.items():
        name = "orders" if key == "orders" else "one" if key == "one" else "checks"
        if "STEP_WORKER_STARTING" in s and "RESOURCE_INIT_STARTED" in s:
            phases[f"{name}_process_s"] = s["RESOURCE_INIT_STARTED"] - s["STEP_WORKER_STARTING"]
        if "STEP_START" in s and "STEP_SUCCESS" in s:
            phases[f"{name}_body_s"] = s["STEP_SUCCESS"] - s["STEP_START"]
    phases["steps"] = float(len(steps))
    return phases


# ------------------------------------------------------------------------------------------------
# the breakdown: -X importtime, and one fresh process's definitions, migration check, resources

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def import_self_times(code: str, env: dict[str, str], cwd: Path) -> Counter:
    """Self import time (seconds) per top-level package of ``python -X importtime -c code``."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], env=env, cwd=cwd, capture_output=True, text=True, check=True
    )
    totals: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            totals[m[4].split(".")[0]] += int(m[1])  # microseconds
    return Counter({k: v / 1e6 for k, v in totals.items()})


def import_summary(env: dict[str, str], cwd: Path, top: int = 8) -> dict:
    """What ``import pipelines.definitions`` imports beyond ``import dagster``: self seconds per package."""
    ours = import_self_times("import pipelines.definitions", env, cwd)
    base = import_self_times("import dagster", env, cwd)
    extra = {k: v - base.get(k, 0.0) for k, v in ours.items() if v - base.get(k, 0.0) > 0.0005}
    own = sum(v for k, v in extra.items() if k in ("pipelines", "taptouch_resource", "taptouch_sandbox"))
    ranked = sorted(extra.items(), key=lambda kv: -kv[1])
    return {
        "dagster_s": sum(base.values()),
        "beyond_dagster_s": sum(extra.values()),
        "our_modules_s": own,
        "top": dict(ranked[:top]),
        "modules": sorted(m for m in ours if m not in base),
    }


PROBE = r"""
import json, sys, time
t = time.perf_counter(); import dagster as dg; out = {"import_dagster_s": time.perf_counter() - t}
t = time.perf_counter(); import pipelines.definitions as d; out["import_definitions_s"] = time.perf_counter() - t
t = time.perf_counter()
for account in d.ACCOUNTS:
    d.account_definitions(account)
d.shared_definitions(d.ACCOUNTS)
out["build_definitions_s"] = time.perf_counter() - t
t = time.perf_counter(); repo = d.defs.get_repository_def(); repo.get_implicit_global_asset_job_def()
out["repository_s"] = time.perf_counter() - t
heavy = ("pandas", "numpy", "sqlalchemy", "psycopg", "httpx", "cryptography", "msgspec", "matplotlib")
out["heavy_imported"] = [m for m in heavy if m in sys.modules]
from pipelines.warehouse.resource import PostgresResource
from pipelines.assets.taptouch import run_context
from taptouch_resource import TaptouchResource
warehouse = PostgresResource()
t = time.perf_counter(); warehouse.ensure_migrated(); out["migration_check_s"] = time.perf_counter() - t
t = time.perf_counter()
with run_context(TaptouchResource(), warehouse) as run:
    pass
out["resource_setup_s"] = time.perf_counter() - t
print(json.dumps(out))
"""


def probe(env: dict[str, str], cwd: Path) -> dict:
    """One fresh process: import, definition building, migration check, resource set-up (seconds)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# the run


def contenders(args, work: Path, env: dict[str, str], sandbox_url: str, admin: str) -> tuple[list[dict], list[str]]:
    """Every timed command (a dict: name, cmd, env, cwd, home for runs) and the databases made."""
    trivial_home = dagster_home(work, "trivial")
    found = [
        {"name": "import dagster", "cmd": [sys.executable, "-c", "import dagster"], "env": env, "cwd": work},
        {
            "name": "trivial asset run",
            "cmd": materialize_cmd("trivial_definitions", "one", None),
            "env": {**env, "PYTHONPATH": str(BENCH), "DAGSTER_HOME": str(trivial_home)},
            "cwd": BENCH,
            "home": trivial_home,
        },
    ]
    trees = [git_tree(rev, work) for rev in args.rev] or [(worktree_label(), ROOT)]
    databases = []
    for label, path in trees:
        name = f"{DATABASE_PREFIX}_{re.sub(r'[^a-z0-9]', '_', label.lower())}"
        databases.append(name)
        home = dagster_home(work, label)
        tree_env = {
            **env,
            "PYTHONPATH": str(path),
            "DAGSTER_HOME": str(home),
            "TAPTOUCH_DATABASE_URL": fresh_database(admin, name),
            "TAPTOUCH_BASE_URL": sandbox_url,
            "TAPTOUCH_CLIENT_ID": "sandbox-client",
            "TAPTOUCH_CLIENT_SECRET": "sandbox-secret",
        }
        importer = [sys.executable, "-c", "import pipelines.definitions"]
        found.append({"name": f"import pipelines.definitions @{label}", "cmd": importer, "env": tree_env, "cwd": path})
        run = materialize_cmd("pipelines.definitions", "orders", args.partition)
        found.append({"name": f"empty orders run @{label}", "cmd": run, "env": tree_env, "cwd": path, "home": home})
    return found, databases


def measure(found: list[dict], runs: int, logs: Path) -> dict[str, list[dict]]:
    """One untimed run of each command (migrates, compiles), then ``runs`` rounds, alternating."""
    samples: dict[str, list[dict]] = {c["name"]: [] for c in found}
    for i in range(runs + 1):
        for n, c in enumerate(found):
            load = os.getloadavg()[0]
            result = timed(c["cmd"], c["env"], c["cwd"], logs / f"{n}-{i}.log")
            if "home" in c:
                result["phases"] = run_phases(c["home"], result)
            if i:
                samples[c["name"]].append({**result, "load_1m": load})
        _progress(f"round {i}/{runs} done" if i else "warm-up done")
    return samples


def summarise(samples: list[dict]) -> dict:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    out: dict = {"wall_s": med([s["wall_s"] for s in samples]), "cpu_s": med([s["cpu_s"] for s in samples])}
    out["walls"] = [round(s["wall_s"], 3) for s in samples]
    keys = {k for s in samples for k in s.get("phases", {})}
    out["phases"] = {k: med([s["phases"][k] for s in samples if k in s["phases"]]) for k in sorted(keys)}
    return out


def _progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def _cell(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(result: dict) -> str:
    """One table: every command's medians, its excess over the trivial run, and the run's phases."""
    head = (
        f"Start-up, median of {result['runs']} runs: {result['machine']}, {result['date']}, load average "
        f"{result['load']['min']:.2f}-{result['load']['max']:.2f}, bytecode cache {result['bytecode_cache']}\n\n"
        "| command | wall s | CPU s | over trivial s | CLI start-up s | orders step: process / body s "
        "| check steps: process / body s | end s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    trivial = result["commands"]["trivial asset run"]["wall_s"]
    lines = []
    for name, s in result["commands"].items():
        p = s["phases"]
        step = "one" if "one_body_s" in p else "orders"
        over = s["wall_s"] - trivial if "run" in name else None
        lines.append(
            f"| {name} | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | {_cell(over)} | {_cell(p.get('cli_startup_s'))} "
            f"| {_cell(p.get(f'{step}_process_s'))} / {_cell(p.get(f'{step}_body_s'))} "
            f"| {_cell(p.get('checks_process_s'))} / {_cell(p.get('checks_body_s'))} | {_cell(p.get('exit_s'))} |"
        )
    return head + "\n".join(lines) + "\n\n" + breakdown_report(result["breakdown"])


def breakdown_report(breakdown: dict) -> str:
    lines = [
        "| tree | import dagster s | pipelines.definitions beyond it s | of which our modules s | top packages "
        "beyond Dagster (self s) | build definitions s | repository s | migration check s | resource set-up s "
        "| heavy modules imported |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for label, b in breakdown.items():
        imp, pr = b["imports"], b["probe"]
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(imp["top"].items())[:6])
        lines.append(
            f"| {label} | {imp['dagster_s']:.2f} | {imp['beyond_dagster_s']:.2f} | {imp['our_modules_s']:.2f} | {top} "
            f"| {pr['build_definitions_s']:.2f} | {pr['repository_s']:.2f} | {pr['migration_check_s']:.3f} "
            f"| {pr['resource_setup_s']:.2f} | {', '.join(pr['heavy_imported']) or 'none'} |"
        )
    return "\n".join(lines) + "\n"


def breakdowns(found: list[dict]) -> dict:
    out = {}
    for c in found:
        if c["name"].startswith("empty orders run @"):
            label = c["name"].split("@", 1)[1]
            out[label] = {"imports": import_summary(c["env"], c["cwd"]), "probe": probe(c["env"], c["cwd"])}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin = args.database_url or os.environ.get("TAPTOUCH_DATABASE_URL", "").strip() or DEFAULT_ADMIN_URL
    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    (work / "logs").mkdir()
    env = base_env(work, not args.no_bytecode_cache)
    databases: list[str] = []
    loads_before = os.getloadavg()
    try:
        with Sandbox(env) as sandbox:
            found, databases = contenders(args, work, env, sandbox.url, admin)
            samples = measure(found, args.runs, work / "logs")
            breakdown = breakdowns(found)
    finally:
        if not args.keep:
            for name in databases:
                drop_database(admin, name)
            shutil.rmtree(work, ignore_errors=True)
    loads = [s["load_1m"] for runs in samples.values() for s in runs] + [loads_before[0]]
    result = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "worktree": worktree_label(),
        "runs": args.runs,
        "partition": args.partition,
        "bytecode_cache": "on" if not args.no_bytecode_cache else "as the environment says",
        "load": {"min": min(loads), "max": max(loads), "median": statistics.median(loads)},
        "commands": {name: summarise(runs) for name, runs in samples.items()},
        "breakdown": breakdown,
        "samples": samples,
    }
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
