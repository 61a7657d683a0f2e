"""The migration runner against a real PostgreSQL."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import psycopg
import pytest

from pipelines.warehouse.db import connect
from pipelines.warehouse.migrations import MigrationError, discover, migrate, migrations_dir, pending, status

CONTRACT_TABLES = {
    "stores",
    "orders",
    "order_items",
    "order_payments",
    "order_refunds",
    "inventory_levels",
    "inventory_snapshots",
    "quarantine",
}

MONEY_COLUMNS = {
    "orders": {"subtotal", "discount", "surcharge", "rounding", "tax", "total", "tips"},
    "order_items": {"unit_price", "discount", "tax", "total"},
    "order_payments": {"amount", "tip", "surcharge"},
    "order_refunds": {"amount"},
    "inventory_levels": {"cost_price", "sell_price"},
    "inventory_snapshots": {"cost_price", "sell_price"},
}


REAL = discover()
"""The project's migration files; tests add theirs after the last one."""


def _next(name: str, offset: int = 1) -> str:
    """File name of a test migration numbered after the real ones."""
    return f"{REAL[-1].version + offset:04d}_{name}.sql"


def _real_applied() -> list[tuple[int, str]]:
    return [(m.version, m.name) for m in REAL]


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A writable copy of the real migration files."""
    target = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), target)
    return target


def _applied_versions(url: str) -> list[tuple[int, str]]:
    with connect(url) as conn:
        return conn.execute("select version, name from taptouch_meta.schema_migrations order by version").fetchall()


def test_migrate_creates_contract_tables_with_exact_money(database_url: str) -> None:
    applied = migrate(database_url)

    assert applied == [m.name for m in REAL]
    with connect(database_url) as conn:
        tables = {
            row[0]
            for row in conn.execute("select table_name from information_schema.tables where table_schema = 'taptouch'")
        }
        columns = {
            (table, column): (data_type, precision, scale)
            for table, column, data_type, precision, scale in conn.execute(
                "select table_name, column_name, data_type, numeric_precision, numeric_scale"
                " from information_schema.columns where table_schema = 'taptouch'"
            )
        }
    assert tables >= CONTRACT_TABLES
    for table, money in MONEY_COLUMNS.items():
        for column in money:
            assert columns[(table, column)] == ("numeric", 12, 2), (table, column)


def test_second_migrate_applies_nothing(database_url: str) -> None:
    first = migrate(database_url)
    assert first == [m.name for m in REAL]
    assert pending(database_url) == []

    assert migrate(database_url) == []
    assert [name for _, name in _applied_versions(database_url)] == first
    assert {s.state for s in status(database_url)} == {"applied"}


def test_pending_lists_unapplied_files_in_order(database_url: str, migrations_copy: Path) -> None:
    (migrations_copy / _next("extra")).write_text("create table taptouch.extra (id int);\n")
    expected = [m.name for m in REAL] + [_next("extra")]
    assert pending(database_url, directory=migrations_copy) == expected
    migrate(database_url, directory=migrations_copy)
    assert pending(database_url, directory=migrations_copy) == []


def test_changed_applied_file_is_refused(database_url: str, migrations_copy: Path) -> None:
    migrate(database_url, directory=migrations_copy)
    (migrations_copy / _next("later")).write_text("create table taptouch.later (id int);\n")
    original = migrations_copy / REAL[0].name
    original.write_bytes(original.read_bytes() + b"\n-- edited after it was applied\n")

    with pytest.raises(MigrationError) as raised:
        migrate(database_url, directory=migrations_copy)

    message = str(raised.value)
    assert REAL[0].name in message
    assert "immutable" in message and "new numbered file" in message
    # Nothing after the changed file was applied either.
    assert _applied_versions(database_url) == _real_applied()
    states = [s.state for s in status(database_url, directory=migrations_copy)]
    assert states == ["changed"] + ["applied"] * (len(REAL) - 1) + ["pending"]


def test_a_database_migrated_by_a_newer_version_is_refused(database_url: str, migrations_copy: Path) -> None:
    """A newer taptouch-sync applied a migration this version does not know (e.g. renamed a column):
    this version refuses it, naming the migration, instead of saying "up to date" and running."""
    newer = migrations_copy / _next("from_a_newer_version")
    newer.write_text("create table taptouch.newer (id int);\n")
    migrate(database_url, directory=migrations_copy)
    newer.unlink()

    with pytest.raises(MigrationError) as raised:
        migrate(database_url, directory=migrations_copy)

    message = str(raised.value)
    assert (
        newer.name in message
        and "newer taptouch-sync" in message
        and "TAPTOUCH_DATABASE_URL, --database-url" in message
    )
    assert [s.state for s in status(database_url, directory=migrations_copy)][-1] == "missing"


def test_failing_file_rolls_back_and_is_named(database_url: str, migrations_copy: Path) -> None:
    broken = migrations_copy / _next("broken")
    broken.write_text("create table taptouch.half_done (id int);\ninsert into taptouch.no_such_table values (1);\n")

    with pytest.raises(MigrationError) as raised:
        migrate(database_url, directory=migrations_copy)

    message = str(raised.value)
    assert broken.name in message
    assert "no_such_table" in message  # the PostgreSQL error
    assert _applied_versions(database_url) == _real_applied()  # earlier files stay
    with connect(database_url) as conn:
        assert conn.execute("select to_regclass('taptouch.half_done')").fetchone() == (None,)

    # Fixed, the file applies on the next run.
    broken.write_text("create table taptouch.half_done (id int);\n")
    assert migrate(database_url, directory=migrations_copy) == [broken.name]


def test_badly_named_file_is_refused(database_url: str, migrations_copy: Path) -> None:
    (migrations_copy / "add_things.sql").write_text("select 1;\n")
    with pytest.raises(MigrationError, match="NNNN_name.sql"):
        migrate(database_url, directory=migrations_copy)


def _migrate_in_child(url: str, directory: str, barrier, results) -> None:
    barrier.wait(timeout=60)
    try:
        results.put(("ok", migrate(url, directory=directory)))
    except BaseException as err:  # reported to the parent, which fails the test
        results.put(("error", repr(err)))


@pytest.mark.slow
def test_concurrent_processes_apply_each_migration_once(database_url: str, migrations_copy: Path) -> None:
    # A slow extra file widens the window in which processes overlap.
    (migrations_copy / _next("slow")).write_text(
        "create table taptouch.slow_marker (id int primary key);\n"
        "insert into taptouch.slow_marker values (1);\n"
        "select pg_sleep(0.5);\n"
    )
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(target=_migrate_in_child, args=(database_url, str(migrations_copy), barrier, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    errors = [detail for kind, detail in outcomes if kind == "error"]
    assert errors == []
    applied_by_all = [name for _, names in outcomes for name in names]
    expected = [m.name for m in REAL] + [_next("slow")]
    assert sorted(applied_by_all) == expected
    assert _applied_versions(database_url) == _real_applied() + [(REAL[-1].version + 1, _next("slow"))]
    with connect(database_url) as conn:
        assert conn.execute("select count(*) from taptouch.slow_marker").fetchone() == (1,)


def test_migrate_reports_unreachable_server() -> None:
    with pytest.raises(psycopg.OperationalError):
        migrate("postgresql://nobody@127.0.0.1:1/nothing")
