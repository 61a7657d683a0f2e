"""Several Taptouch accounts in one deployment: two clients side by side over real HTTP.

One sandbox server (``SandboxGroup``) serves two clients with disjoint stores at one base URL, so
the tokens and request budgets below are told apart by client id alone, as in production. The
accounts' definitions come from the same factory the code location uses, their credentials from
``TAPTOUCH_<NAME>_*`` through ``dg.EnvVar`` as there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pipelines import accounts
from pipelines.accounts import DEFAULT, Account
from pipelines.definitions import account_definitions
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.resource import PostgresResource
from pipelines.warehouse.views import apply_views
from taptouch_sandbox import Sandbox, SandboxConfig, SandboxGroup
from tests.support import truth

END = date(2026, 11, 27)
DAY = "2026-11-26"
ROOT = Path(__file__).resolve().parents[2]
NORTH, SOUTH = Account("north"), Account("south")
TABLES = (
    "stores",
    "orders",
    "order_items",
    "order_payments",
    "order_refunds",
    "inventory_levels",
    "inventory_snapshots",
    "sync_log",
    "sync_marks",
)


# ------------------------------------------------------------------------------------ configuration


def test_accounts_unset_is_the_single_account_with_todays_names():
    assert accounts.parse(None) == accounts.parse("") == accounts.parse(" , ") == [DEFAULT]
    assert DEFAULT.key_string("orders") == "orders" and DEFAULT.pool == "taptouch_api"
    assert DEFAULT.resource_key == "taptouch" and DEFAULT.named("orders_hourly") == "orders_hourly"
    assert DEFAULT.env("CLIENT_ID") == "TAPTOUCH_CLIENT_ID"


def test_named_accounts_get_their_own_names():
    north, south = accounts.parse(" north, south_2 ")
    assert north.key("orders") == dg.AssetKey(["north", "orders"])
    assert (north.pool, north.resource_key, north.named("orders_hourly")) == (
        "taptouch_api_north",
        "taptouch_north",
        "north_orders_hourly",
    )
    assert south.env("CLIENT_SECRET") == "TAPTOUCH_SOUTH_2_CLIENT_SECRET"


@pytest.mark.parametrize(
    "raw, error",
    [
        ("North", "not a valid account name"),
        ("1st", "not a valid account name"),
        ("a-b", "not a valid account name"),
        ("default", "reserved"),
        ("north,north", "named twice"),
    ],
)
def test_bad_account_names_fail_at_load_naming_the_variable(raw, error):
    with pytest.raises(ValueError, match=f"TAPTOUCH_ACCOUNTS.*{error}"):
        accounts.parse(raw)


SHAPE = """
import json
from pipelines.definitions import defs
repo = defs.get_repository_def()
graph = repo.asset_graph
print(json.dumps({
    "assets": sorted(k.to_user_string() for k in graph.get_all_asset_keys()),
    "pools": {k.to_user_string(): sorted(graph.get(k).pools or []) for k in graph.get_all_asset_keys()},
    "jobs": sorted(j.name for j in repo.get_all_jobs()),
    "schedules": sorted(s.name for s in repo.schedule_defs),
    "sensors": sorted(s.name for s in repo.sensor_defs),
    "resources": sorted(defs.resources),
    "checks": sorted(k.asset_key.to_user_string() + ":" + k.name for k in graph.asset_check_keys),
    "view_deps": sorted(k.to_user_string() for k in graph.get(__import__("dagster").AssetKey("sales_orders")).parent_keys),
}))
"""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTOUCH_") or k == "TAPTOUCH_PGDATA"}
    return {**env, **extra}


def test_a_blank_account_credential_is_named_by_the_accounts_own_variable(monkeypatch):
    """TAPTOUCH_NORTH_CLIENT_ID="   " (a resource bound to it holds the blanks): the error names that
    variable, not TAPTOUCH_CLIENT_ID, which setting would not help."""
    from pipelines import settings
    from taptouch_resource import TaptouchResource

    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_ID", "   ")
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_SECRET", "north-secret")
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "the-single-account")
    bound = TaptouchResource(client_id="   ", client_secret="north-secret")
    with pytest.raises(Exception, match="^TAPTOUCH_NORTH_CLIENT_ID is not set") as err:
        settings.account_resource(bound, Account("north"))
    assert "the-single-account" not in str(err.value)
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_ID", " north-id\n")
    assert settings.account_resource(bound, Account("north")).resolved()[:2] == ("north-id", "north-secret")


def test_definitions_with_two_accounts_load_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SHAPE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(TAPTOUCH_ACCOUNTS="north,south"),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    shape = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("north", "south"):
        for asset in ("stores", "orders", "inventory", "order_deletions"):
            assert f"{name}/{asset}" in shape["assets"]
            assert shape["pools"][f"{name}/{asset}"] == [f"taptouch_api_{name}"]
        for schedule in (
            "orders_hourly",
            "stores_daily",
            "inventory_hourly",
            "orders_reconcile_daily",
            "merchant_tokens_keepalive",
        ):
            assert f"{name}_{schedule}" in shape["schedules"]
        assert f"{name}_orders_job" in shape["jobs"] and f"{name}_freshness_checks_sensor" in shape["sensors"]
        assert f"taptouch_{name}" in shape["resources"]
        for check in (
            "orders:freshness_check",
            "orders:no_quarantined_records",
            "orders:schema_drift",
            "stores:schema_drift",
            "inventory:schema_drift",
        ):
            assert f"{name}/{check}" in shape["checks"]
    assert not {"stores", "orders", "inventory", "order_deletions"} & set(shape["assets"])
    assert "taptouch" not in shape["resources"] and "warehouse" in shape["resources"]
    # sales_orders reads every account's orders and stores, and the shared load_coverage view
    assert shape["view_deps"] == ["load_coverage", "north/orders", "north/stores", "south/orders", "south/stores"]
    assert {"taptouch_run_failure_alert", "taptouch_check_failure_alert", "analytics_views_automation"} <= set(
        shape["sensors"]
    )


@pytest.mark.parametrize(
    "command",
    [
        [str(ROOT / ".venv/bin/dg"), "check", "defs"],
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "pipelines.definitions"],
    ],
)
def test_check_defs_passes_with_accounts_configured_and_no_credentials(command):
    if not Path(command[0]).exists() and command[0].endswith("dg"):
        pytest.skip("dg is not installed in .venv")
    out = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=_env(TAPTOUCH_ACCOUNTS="north,south")
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


def test_a_bad_accounts_value_fails_the_code_location_load_naming_it():
    out = subprocess.run(
        [sys.executable, "-c", "import pipelines.definitions"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=_env(TAPTOUCH_ACCOUNTS="north,Default"),
        timeout=300,
    )
    assert out.returncode != 0 and "TAPTOUCH_ACCOUNTS" in out.stderr


# ------------------------------------------------------------------------------------ over real HTTP


@pytest.fixture
def two_accounts(monkeypatch, migrated_db):
    """One server, two clients (north: stores 7101-7103, south: 8101-8102), their TAPTOUCH_* set."""
    north = Sandbox(
        SandboxConfig(
            seed=7,
            stores=3,
            days=4,
            end_date=END,
            orders_per_day=30,
            client_id="north-client",
            client_secret="north-secret",
        )
    )
    south = Sandbox(
        SandboxConfig(
            seed=8,
            stores=2,
            days=4,
            end_date=END,
            orders_per_day=30,
            store_id_base=8101,
            id_space=1,
            client_id="south-client",
            client_secret="south-secret",
        )
    )
    group = SandboxGroup([north, south])
    with group.serve() as url:
        for account, sb in ((NORTH, north), (SOUTH, south)):
            monkeypatch.setenv(account.env("CLIENT_ID"), sb.config.client_id)
            monkeypatch.setenv(account.env("CLIENT_SECRET"), sb.config.client_secret)
            monkeypatch.setenv(account.env("BASE_URL"), url)
        monkeypatch.setenv("TAPTOUCH_SOUTH_REQUESTS_PER_SECOND", "40")  # north: TAPTOUCH_REQUESTS_PER_SECOND
        monkeypatch.setenv("TAPTOUCH_REQUESTS_PER_SECOND", "50")
        monkeypatch.delenv("TAPTOUCH_BASE_URL", raising=False)
        yield {"north": north, "south": south, "url": url, "db": migrated_db}


def _resources(db: str, *accounts_: Account) -> dict:
    # the code location's own resources: credentials bound with dg.EnvVar(TAPTOUCH_<NAME>_...)
    return {**{a.resource_key: a.resource() for a in accounts_}, "warehouse": PostgresResource(database_url=db)}


def _assets(account: Account) -> list:
    defs = account_definitions(account)
    return [a for a in defs.assets if not any(k.path[-1] == "order_deletions" for k in a.keys)]


def _load(env, account: Account, *, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    """One account's stores, inventory and orders of DAY: one run, as its schedules would."""
    instance = env.setdefault("instance", dg.DagsterInstance.ephemeral())
    return dg.materialize(
        _assets(account),
        resources=_resources(env["db"], account),
        partition_key=DAY,
        selection=[account.key("stores"), account.key("orders"), account.key("inventory")],
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _rows(db: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(db) as conn:
        return conn.execute(sql, args or None).fetchall()


def _snapshot(db: str, account: str) -> dict[str, list]:
    """Every row of the account, table by table (what must not change when the other account fails)."""
    out = {}
    for table in ("stores", "orders", "order_items", "order_payments", "order_refunds", "inventory_levels"):
        cols = "*" if table != "stores" else "store_id, name, raw, account"
        out[table] = _rows(db, f"select {cols} from taptouch.{table} where account = %s order by 1, 2", account)
    return out


def test_two_accounts_load_side_by_side_each_row_tagged_with_its_account(two_accounts):
    env, db = two_accounts, two_accounts["db"]
    for account in (NORTH, SOUTH):
        assert _load(env, account).success
    for name in ("north", "south"):
        sb = env[name]
        want = truth.orders_updated_in_days(sb, [DAY])
        assert want
        got = dict(_rows(db, "select order_id, account from taptouch.orders where store_id = any(%s)", sb.store_ids()))
        assert set(got) == set(want) and set(got.values()) == {name}
        assert _rows(db, "select store_id from taptouch.stores where account = %s order by 1", name) == [
            (s,) for s in sb.store_ids()
        ]
    for table in TABLES:  # every table: every row belongs to one of the two accounts, none to 'default'
        accounts_in = {r[0] for r in _rows(db, f"select distinct account from taptouch.{table}")}
        assert accounts_in == {"north", "south"}, table
    # children carry their order's account
    assert _rows(
        db,
        "select count(*) from taptouch.order_items i join taptouch.orders o using (order_id)"
        " where i.account <> o.account",
    ) == [(0,)]

    # an analyst compares the accounts in one query
    with psycopg.connect(db, autocommit=True) as conn:
        apply_views(conn)
    per_account = dict(_rows(db, "select account, sum(order_count) from analytics.daily_store_sales group by account"))
    assert set(per_account) == {"north", "south"} and all(n > 0 for n in per_account.values())


def test_checks_and_step_metadata_are_the_accounts_own(two_accounts):
    env = two_accounts
    result = _load(env, SOUTH)
    evaluations = result.get_asset_check_evaluations()
    assert {e.asset_key for e in evaluations} == {SOUTH.key("orders")}
    checked = next(e for e in evaluations if e.check_name == "order_arithmetic").metadata["orders_checked"].value
    assert checked == len(_rows(env["db"], "select 1 from taptouch.orders where account = 'south'"))
    assert _load(env, NORTH).success
    evaluations = _load(env, SOUTH).get_asset_check_evaluations()  # north's rows are not south's to check
    assert (
        next(e for e in evaluations if e.check_name == "order_arithmetic").metadata["orders_checked"].value == checked
    )


def test_one_account_failing_leaves_the_other_accounts_data_and_runs_untouched(two_accounts, monkeypatch):
    env, db = two_accounts, two_accounts["db"]
    assert _load(env, NORTH).success and _load(env, SOUTH).success
    north_before = _snapshot(db, "north")
    north_requests = env["north"].stats.api_requests

    # 1. south's secret is wrong: south's run fails at once, naming the client; north's run is unaffected
    monkeypatch.setenv("TAPTOUCH_SOUTH_CLIENT_SECRET", "wrong")
    failed = _load(env, SOUTH, raise_on_error=False)
    assert not failed.success
    assert "invalid_client" in "".join(str(e.event_specific_data.error) for e in failed.get_step_failure_events())
    assert _load(env, NORTH).success
    assert _snapshot(db, "north") == north_before  # loading the same day again changes nothing
    assert env["north"].stats.api_requests > north_requests

    # 2. one run with both accounts' assets (e.g. "materialize all"): south's steps fail, north's commit
    monkeypatch.setenv("TAPTOUCH_SOUTH_CLIENT_SECRET", "south-secret")
    env["south"].faults.forbidden_stores = {8101}
    south_before = _rows(db, "select order_id, updated_at from taptouch.orders where account = 'south' order by 1")
    both = dg.materialize(
        [*_assets(NORTH), *_assets(SOUTH)],
        resources=_resources(db, NORTH, SOUTH),
        partition_key=DAY,
        selection=[NORTH.key("orders"), SOUTH.key("orders")],
        instance=env["instance"],
        raise_on_error=False,
    )
    assert not both.success
    failures = both.get_step_failure_events()
    assert {e.step_key for e in failures} == {"south__orders"}
    assert "8101" in str(failures[0].event_specific_data.error)  # the forbidden store is named
    assert {e.asset_key for e in both.get_asset_materialization_events()} == {NORTH.key("orders")}
    assert _snapshot(db, "north") == north_before
    # south's other store still committed (per-store isolation inside the account)
    assert (
        _rows(db, "select order_id, updated_at from taptouch.orders where account = 'south' order by 1") == south_before
    )


def test_budgets_and_tokens_are_separate_per_account(two_accounts):
    env, db = two_accounts, two_accounts["db"]
    assert _load(env, NORTH).success and _load(env, SOUTH).success
    budgets = {r[0]: r[1:] for r in _rows(db, "select client_id, rate, requests from taptouch_meta.request_budget")}
    assert set(budgets) == {"north-client", "south-client"}
    assert budgets["north-client"][0] == 50 and budgets["south-client"][0] == 40  # each account's own rate
    # each budget counted its own client's requests only (the sandbox counts what each client sent)
    assert budgets["north-client"][1] == env["north"].stats.api_requests
    assert budgets["south-client"][1] == env["south"].stats.api_requests

    tokens = _rows(db, "select base_url, client_id from taptouch_auth.tokens order by client_id")
    assert [t[1] for t in tokens] == ["north-client", "south-client"]
    assert {t[0] for t in tokens} == {env["url"]}  # one server: told apart by client id
    # each client asked for one token and then shared it between its runs
    assert env["north"].stats.token_requests == 1 and env["south"].stats.token_requests == 1
    assert _load(env, NORTH).success
    assert env["north"].stats.token_requests == 1


def test_existing_rows_and_the_single_account_setup_are_account_default(make_database):
    url = make_database()
    migrate(url, directory=_migrations_up_to(8))
    with psycopg.connect(url) as conn:
        conn.execute(
            "insert into taptouch.stores (store_id, name, status, timezone, currency, raw, updated_at)"
            " values (1, 'Old', 'active', 'UTC', 'AUD', '{}', now())"
        )
    migrate(url)
    assert _rows(url, "select account from taptouch.stores") == [("default",)]
    columns = _rows(
        url,
        "select table_name, data_type, is_nullable from information_schema.columns"
        " where table_schema = 'taptouch' and column_name = 'account' order by 1",
    )
    assert {c[0] for c in columns} >= set(TABLES) | {"quarantine"}
    assert {c[1:] for c in columns} == {("text", "NO")}
    with psycopg.connect(url) as conn:  # a session with no account set writes 'default'
        conn.execute("insert into taptouch.sync_log (entity, started_at) values ('x', now())")
        conn.execute("select set_config('taptouch.account', 'north', false)")
        conn.execute("insert into taptouch.sync_log (entity, started_at) values ('y', now())")
    assert _rows(url, "select entity, account from taptouch.sync_log order by 1") == [("x", "default"), ("y", "north")]


def _migrations_up_to(n: int) -> Path:
    import shutil
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="migrations-"))
    for path in sorted((ROOT / "sql" / "migrations").glob("*.sql")):
        if int(path.name[:4]) <= n:
            shutil.copy(path, target / path.name)
    return target


# ------------------------------------------------------------------------------------ alerts


def test_alerts_name_the_account_and_hide_its_secret(monkeypatch):
    from types import SimpleNamespace

    from pipelines import alerts

    monkeypatch.setenv("TAPTOUCH_SOUTH_CLIENT_SECRET", "s0uth-very-secret")
    run = SimpleNamespace(
        asset_selection={SOUTH.key("orders")}, tags={"dagster/partition": DAY}, run_id="r1", job_name="south_orders_job"
    )
    message = alerts.run_failure_message(run, [("south__orders", "invalid_client for s0uth-very-secret")], None)
    assert "account: south" in message["text"] and "south/orders" in message["text"]
    assert "s0uth-very-secret" not in json.dumps(message)
    single = SimpleNamespace(asset_selection={DEFAULT.key("orders")}, tags={}, run_id="r2", job_name="orders_job")
    assert "account" not in alerts.run_failure_message(single, [], "boom")["text"]  # as before


def test_an_operator_materializes_one_accounts_partition_from_the_command_line(two_accounts, tmp_path):
    """`dagster asset materialize -m pipelines.definitions --select north/orders --partition DAY`
    with TAPTOUCH_ACCOUNTS=north,south: only north's orders of that day, tagged north."""
    env, db = two_accounts, two_accounts["db"]
    home = tmp_path / "dagster_home"
    home.mkdir()
    variables = {k: v for k, v in os.environ.items() if k.startswith(("TAPTOUCH_NORTH_", "TAPTOUCH_SOUTH_"))}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "pipelines.definitions",
            "--select",
            "north/orders",
            "--partition",
            DAY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(
            TAPTOUCH_ACCOUNTS="north,south",
            TAPTOUCH_DATABASE_URL=db,
            DAGSTER_HOME=str(home),
            TAPTOUCH_REQUESTS_PER_SECOND="0",
            **variables,
        ),
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    want = truth.orders_updated_in_days(env["north"], [DAY])
    assert dict(_rows(db, "select order_id, account from taptouch.orders")) == {oid: "north" for oid in want}
    assert env["south"].stats.api_requests == 0 and env["south"].stats.token_requests == 0


def test_the_sandbox_group_keeps_each_clients_stores_and_tokens_apart():
    import httpx

    from taptouch_sandbox.group import demo_group

    group, members = demo_group(days=2)
    north, south = members["north"], members["south"]
    assert not set(north.store_ids()) & set(south.store_ids())
    # ... and apart from the single-account demo's sandbox, so both demos can share one warehouse
    # with every row keeping the account that loaded it (ids are global: a shared id would stay 'default')
    single = Sandbox(SandboxConfig(days=2))
    assert not set(single.store_ids()) & (set(north.store_ids()) | set(south.store_ids()))
    ids = {
        name: {o["id"] for s in sb.store_ids() for o in sb.orders(s)}
        for name, sb in {"single": single, **members}.items()
    }
    assert all(ids.values()) and not ids["single"] & ids["north"] and not ids["single"] & ids["south"]
    with group.serve() as url, httpx.Client(base_url=url, timeout=10) as http:

        def token(client_id, secret):
            return http.post(
                "/auth/v2/token",
                data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
            )

        assert token("nobody", "x").json()["error"] == "invalid_client"
        assert token(north.config.client_id, south.config.client_secret).status_code == 401
        north_token = token(north.config.client_id, north.config.client_secret).json()["access_token"]
        listed = http.get("/integration/v1/stores", headers={"Authorization": f"Bearer {north_token}"})
        assert [s["id"] for s in listed.json()["data"]] == north.store_ids()
        other = http.get(
            f"/integration/v1/stores/{south.store_ids()[0]}/orders", headers={"Authorization": f"Bearer {north_token}"}
        )
        assert other.status_code in (403, 404)  # north's token never reads south's store
    assert south.stats.token_requests == 0 and south.stats.api_requests == 0  # nothing above was south's
    with pytest.raises(ValueError, match="disjoint"):
        SandboxGroup([Sandbox(SandboxConfig(client_id="a")), Sandbox(SandboxConfig(client_id="b", id_space=1))])


def test_schema_drift_of_one_account_is_not_the_others(two_accounts):
    from pipelines.checks import find_drift

    env, db = two_accounts, two_accounts["db"]
    env["south"].faults.extra_fields = True  # south's API starts sending fields no column carries
    assert _load(env, NORTH).success and _load(env, SOUTH).success
    with psycopg.connect(db) as conn:
        south, _ = find_drift(conn, "orders", account="south")
        north, scanned = find_drift(conn, "orders", account="north")
    assert south and not north and scanned > 0


def test_launchpad_config_of_an_accounts_resource_keeps_the_accounts_credentials(two_accounts, monkeypatch):
    """Run config replaces the resource's EnvVar-bound fields: the ones it leaves out come from the
    account's TAPTOUCH_<NAME>_* (never TAPTOUCH_CLIENT_ID, which here is another client)."""
    env = two_accounts
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "south-client")
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "south-secret")
    result = dg.materialize(
        _assets(NORTH),
        resources=_resources(env["db"], NORTH),
        partition_key=DAY,
        selection=[NORTH.key("orders")],
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"resources": {"taptouch_north": {"config": {"page_size": 7}}}},
    )
    assert result.success
    assert env["south"].stats.token_requests == 0 and env["north"].stats.token_requests == 1
    assert set(dict(_rows(env["db"], "select order_id, account from taptouch.orders")).values()) == {"north"}
    monkeypatch.delenv("TAPTOUCH_NORTH_CLIENT_SECRET")
    failed = dg.materialize(
        _assets(NORTH),
        resources=_resources(env["db"], NORTH),
        partition_key=DAY,
        selection=[NORTH.key("orders")],
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"resources": {"taptouch_north": {"config": {"page_size": 7}}}},
        raise_on_error=False,
    )
    assert "TAPTOUCH_NORTH_CLIENT_SECRET is not set" in str(
        failed.get_step_failure_events()[0].event_specific_data.error
    )


def test_an_accounts_token_keepalive_uses_its_own_client(two_accounts):
    from pipelines.tokens import keepalive_job

    job = keepalive_job(NORTH)
    assert job.name == "north_merchant_tokens_keepalive_job" and keepalive_job(NORTH) is job
    result = job.execute_in_process(resources=_resources(two_accounts["db"], NORTH))
    assert result.success and result.output_for_node("north_refresh_merchant_tokens") == 0  # no merchant grants


@pytest.mark.slow
def test_the_token_commands_take_an_account(two_accounts, monkeypatch, capsys):
    """``authorize`` / ``tokens`` / ``refresh --account south`` use south's TAPTOUCH_SOUTH_* and its
    grants only; without ``--account`` they stay the single-account commands."""
    from pipelines.cli import main
    from tests.support.oauth_helpers import run_authorize_command

    monkeypatch.setenv("TAPTOUCH_ACCOUNTS", "north,south")
    db, south = two_accounts["db"], two_accounts["south"]
    done, _ = run_authorize_command(["--account", "south", "--merchant", "bakery", "--database-url", db], {})
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "Authorized merchant 'bakery'" in out and "8101, 8102" in out  # south's stores
    assert "south_merchant_tokens_keepalive" in out and "refresh --account south" in out
    assert south.grant_requests["authorization_code"] == 1
    assert two_accounts["north"].grant_requests["authorization_code"] == 0

    assert main(["tokens", "--account", "south", "--database-url", db]) == 0
    listing = capsys.readouterr().out
    assert "merchant bakery [south-client @" in listing and "stores 8101, 8102" in listing
    assert main(["tokens", "--account", "north", "--database-url", db]) == 0
    assert "No tokens stored" in capsys.readouterr().out  # north's client id has no grant
    assert main(["refresh", "--account", "south", "--database-url", db]) == 0
    assert capsys.readouterr().out.strip() == "merchant bakery: fresh"

    assert main(["tokens", "--account", "east", "--database-url", db]) == 2
    assert "'east' is not one of TAPTOUCH_ACCOUNTS (north, south)" in capsys.readouterr().err
    monkeypatch.delenv("TAPTOUCH_SOUTH_CLIENT_SECRET")
    assert main(["refresh", "--account", "south", "--database-url", db]) == 2  # a configuration error
    assert "TAPTOUCH_SOUTH_CLIENT_SECRET is not set" in capsys.readouterr().err
