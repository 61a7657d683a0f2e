"""Asset checks beyond the loads' own: freshness (Dagster's machinery) and schema drift.

``freshness_check`` on ``orders`` (``dg.build_last_update_freshness_checks``, last load under
:data:`ORDERS_FRESHNESS` old) with its ``freshness_checks_sensor``; ``schema_drift`` on ``stores``,
``orders`` and ``inventory`` warns about fields in ``raw`` that no typed column carries, seen in the
last :data:`DRIFT_LOOKBACK_DAYS` days. What they report and how to promote a field: docs/alerts.md.
"""

import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from .accounts import DEFAULT, Account
from .warehouse.entities import ENTITIES, Entity
from .warehouse.resource import PostgresResource

ORDERS_FRESHNESS = timedelta(hours=2)
DRIFT_CHECK = "schema_drift"
DRIFT_LOOKBACK_DAYS = 7
EXAMPLE_CHARS = 120


def freshness_definitions(account: Account = DEFAULT) -> tuple[list, dg.SensorDefinition]:
    """``freshness_check`` on the account's ``orders`` and its sensor (``<name>_freshness_checks_sensor``)."""
    with warnings.catch_warnings():
        # "superseded" by FreshnessPolicy, whose evaluations are not check results: the alerts sensor
        # (pipelines/alerts.py) notifies on failed checks, so a check is what we want here.
        warnings.simplefilter("ignore")
        checks = dg.build_last_update_freshness_checks(
            assets=[account.key("orders")],
            lower_bound_delta=ORDERS_FRESHNESS,
            severity=dg.AssetCheckSeverity.WARN,
        )
        sensor = dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            name=account.named("freshness_checks_sensor"),
            minimum_interval_seconds=300,
        )
    return list(checks), sensor


@dataclass(frozen=True)
class RawShape:
    """Which fields of an entity's raw record the typed columns carry."""

    table: str
    seen_column: str  # when the row was written: loaded_at / synced_at
    top: frozenset[str]  # top-level fields carried by a column (or by a child table)
    objects: dict  # nested object -> its carried fields ("address" absent: stored whole as jsonb)
    arrays: dict  # array of objects -> the fields its child table carries
    kept_in_raw: frozenset[str] = frozenset()  # known fields deliberately left in raw only


def raw_shape(entity: Entity) -> RawShape:
    """The fields of ``entity``'s raw record that its declared columns (pipelines/warehouse/entities.py)
    and child tables carry."""
    paths = [f.path for f in entity.fields if f.path is not None]
    objects: dict[str, set[str]] = {}
    for path in paths:
        head, _, rest = path.partition(".")
        if rest:
            objects.setdefault(head, set()).add(rest)
    return RawShape(
        table=entity.table or "",
        seen_column=entity.seen_column,
        top=frozenset(p.partition(".")[0] for p in paths) | {name for name, _ in entity.lines},
        objects={head: frozenset(fields) for head, fields in objects.items()},
        arrays={name: frozenset(f.path for f in child.fields if f.path is not None) for name, child in entity.lines},
        kept_in_raw=entity.kept_in_raw,
    )


SHAPES: dict[str, RawShape] = {
    asset: raw_shape(ENTITIES[name])
    for asset, name in (("stores", "store"), ("orders", "order"), ("inventory", "inventory"))
}
"""Per asset, which raw fields are known; a field outside is schema drift."""


def carried_paths(shape: RawShape) -> list[str]:
    paths = set(shape.top) | set(shape.kept_in_raw)
    paths |= {f"{obj}.{f}" for obj, fields in shape.objects.items() for f in fields}
    paths |= {f"{arr}[].{f}" for arr, fields in shape.arrays.items() for f in fields}
    return sorted(paths)


_DRIFT_SQL = """
with recs as (
    select raw, {seen} as seen_at from {table}
    where {seen} >= now() - make_interval(days => %(days)s) and jsonb_typeof(raw) = 'object'
      and (%(account)s::text is null or account = %(account)s)
),
fields as (
    select k.key as path, k.value, recs.seen_at
    from recs cross join lateral jsonb_each(recs.raw) as k
    union all
    select o.name || '.' || k.key, k.value, recs.seen_at
    from recs
    cross join lateral unnest(%(objects)s::text[]) as o(name)
    cross join lateral jsonb_each(case when jsonb_typeof(recs.raw -> o.name) = 'object'
                                       then recs.raw -> o.name else '{{}}'::jsonb end) as k
    union all
    select a.name || '[].' || k.key, k.value, recs.seen_at
    from recs
    cross join lateral unnest(%(arrays)s::text[]) as a(name)
    cross join lateral jsonb_array_elements(case when jsonb_typeof(recs.raw -> a.name) = 'array'
                                                 then recs.raw -> a.name else '[]'::jsonb end) as e
    cross join lateral jsonb_each(case when jsonb_typeof(e) = 'object' then e else '{{}}'::jsonb end) as k
)
select path, min(seen_at) as first_seen, count(*) as records,
       left((array_agg(value::text order by seen_at))[1], %(chars)s) as example
from fields
where not (path = any(%(carried)s))
group by path
order by path
"""


def find_drift(
    conn, entity: str, *, days: int = DRIFT_LOOKBACK_DAYS, account: str | None = None
) -> tuple[list[tuple], int]:
    """``([(path, first_seen, records, example), ...], records scanned)`` for ``entity``; with
    ``account``, only that account's records."""
    from psycopg import sql

    shape = SHAPES[entity]
    schema, table = shape.table.split(".")
    query = sql.SQL(_DRIFT_SQL).format(seen=sql.Identifier(shape.seen_column), table=sql.Identifier(schema, table))
    with conn.cursor() as cur:
        cur.execute(
            query,
            {
                "days": days,
                "objects": sorted(shape.objects),
                "arrays": sorted(shape.arrays),
                "carried": carried_paths(shape),
                "chars": EXAMPLE_CHARS,
                "account": account,
            },
        )
        # a field of the customer object is personal data (forget-customer erases it from raw, never
        # from a check's metadata or an alert): its path and count are shown, not its value
        rows = [
            (p, first, n, "(a customer field: value not shown)" if p.startswith("customer.") else ex)
            for p, first, n, ex in cur.fetchall()
        ]
        cur.execute(
            sql.SQL(
                "select count(*) from {t} where {seen} >= now() - make_interval(days => %s)"
                " and (%s::text is null or account = %s)"
            ).format(t=sql.Identifier(schema, table), seen=sql.Identifier(shape.seen_column)),
            (days, account, account),
        )
        scanned = cur.fetchone()[0]
    return rows, scanned


def _md_table(rows: list[tuple]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    head = "| field | first seen | records | example |\n|---|---|---|---|\n"
    return head + "".join(f"| `{cell(p)}` | {cell(f)} | {n} | `{cell(e)}` |\n" for p, f, n, e in rows)


def _make_drift_check(entity: str, account: Account = DEFAULT) -> dg.AssetChecksDefinition:
    shape = SHAPES[entity]
    only = None if account.is_default else account.name  # a named account looks at its own rows

    @dg.asset_check(
        asset=account.key(entity),
        name=DRIFT_CHECK,
        blocking=False,
        description=(
            f"Fields in {shape.table}.raw (records written in the last {DRIFT_LOOKBACK_DAYS} days) that no "
            f"typed column carries; warns, never fails the load. docs/alerts.md: promoting a field."
        ),
    )
    def _drift(warehouse: PostgresResource) -> dg.AssetCheckResult:
        warehouse.ensure_migrated()
        with warehouse.connect() as conn:
            rows, scanned = find_drift(conn, entity, account=only)
        metadata: dict[str, Any] = {
            "unknown_fields": len(rows),
            "fields": ", ".join(r[0] for r in rows) or "none",
            "records_scanned": scanned,
            "lookback_days": DRIFT_LOOKBACK_DAYS,
            "table": shape.table,
        }
        if rows:
            metadata["drift"] = dg.MetadataValue.md(_md_table(rows))
        return dg.AssetCheckResult(
            passed=not rows,
            severity=dg.AssetCheckSeverity.WARN,
            metadata=metadata,
            description=(f"{len(rows)} field(s) in raw not carried by a column: " + ", ".join(r[0] for r in rows))
            if rows
            else None,
        )

    return _drift


def account_checks(account: Account = DEFAULT) -> tuple[list, list[dg.SensorDefinition]]:
    """The checks (freshness, schema drift) and sensors of one account's assets."""
    freshness, sensor = freshness_definitions(account)
    return [*freshness, *(_make_drift_check(entity, account) for entity in SHAPES)], [sensor]


# The single-account checks (unprefixed names): the factory with no prefix.
freshness_checks, freshness_checks_sensor = freshness_definitions(DEFAULT)
drift_checks = [_make_drift_check(entity) for entity in SHAPES]
asset_checks = [*freshness_checks, *drift_checks]
sensors = [freshness_checks_sensor]
