"""Adding a column is a migration plus one declaration line (docs/warehouse.md, "Adding a column").

A throwaway database gets the migration's ``ALTER TABLE``; a fresh interpreter adds the matching
``Field`` to the order's declaration before importing the pipeline, exactly as a new line in
pipelines/warehouse/entities.py would, and loads orders through the real loader. Asserted: the new
field is parsed, validated (too long or of the wrong type: that order is quarantined with the
reason), loaded into its column by both validation paths, counted as carried by the schema-drift
check, and commented in PostgreSQL from the declaration's text.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[2]

# What the new declaration line is, and what loading with it gives (run in a fresh interpreter, so
# that every module derives its types, columns and shapes from the extended declaration).
LOAD_WITH_AN_EXTRA_COLUMN = r"""
import json, sys
from decimal import Decimal
import psycopg
from pipelines.warehouse import entities as e

e.ORDER = e.ORDER.with_field(e.Field("loyalty_tier", "loyalty.tier", e.TEXT, "the customer's loyalty tier",
                                     limit=20))
e.ENTITIES["order"] = e.ORDER

from pipelines import checks
from pipelines.warehouse import catalog, records
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from tests.support import factories as f

TZ = "Australia/Melbourne"
orders = [f.order(1, loyalty={"tier": "gold"}), f.order(2, loyalty={"tier": "x" * 21}),
          f.order(3, loyalty={"tier": 5}), f.order(4), f.order(5, loyalty={"tier": "silver"}, total=Decimal("1.00"))]
gold = records.as_bytes(orders[0])
decoded = records._checked(gold, "order", records._DECODERS["order"])
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    load_stores(conn, [f.store(7101, TZ)])
    with OrderWindowLoad(conn, window="2026-11-02") as load:
        load.add_page(7101, [records.as_bytes(o) for o in orders])
        load.finish()
    catalog.apply_comments(conn, [("taptouch", "orders")])
    print(json.dumps({
        "last_column": records.ORDER_COLS[-1],
        "parsed": records.parse_order(orders[0], TZ)["order"]["loyalty_tier"],
        "fast_path": records._order_fast(decoded, gold, TZ, 7101).order[-1],
        "precise_path": records._order_precise(decoded, gold, TZ, 7101).order[-1],
        "carried": sorted(checks.SHAPES["orders"].objects["loyalty"]),
        "rows": conn.execute("select order_id, loyalty_tier from taptouch.orders order by 1").fetchall(),
        "quarantined": conn.execute("select record_key, reason from taptouch.quarantine order by 1").fetchall(),
        "comment": conn.execute("select col_description('taptouch.orders'::regclass, attnum) from pg_attribute"
                                " where attrelid = 'taptouch.orders'::regclass and attname = 'loyalty_tier'"
                                ).fetchone()[0],
    }))
"""


def test_a_column_added_by_a_migration_and_one_declaration_line_is_parsed_validated_and_loaded(make_database):
    from pipelines.warehouse.migrations import migrate

    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("alter table taptouch.orders add column loyalty_tier text")  # the migration's part

    done = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_AN_EXTRA_COLUMN, url], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])

    assert got["last_column"] == "loyalty_tier"
    assert got["parsed"] == got["fast_path"] == got["precise_path"] == "gold"
    assert got["rows"] == [[1, "gold"], [4, None]]
    assert got["quarantined"] == [
        ["2", "loyalty.tier is 21 characters long (limit 20)"],
        ["3", "loyalty.tier must be text, got int"],
        ["5", "total 1.00 != subtotal - discount + surcharge + rounding = 36.60"],
    ]
    assert got["carried"] == ["tier"]  # no schema-drift warning for the promoted field
    assert got["comment"] == "the customer's loyalty tier"


def test_the_declarations_in_this_process_are_the_shipped_ones():
    """The extra column above lives only in its own interpreter."""
    from pipelines.warehouse import records

    assert "loyalty_tier" not in records.ORDER_COLS
