"""Property-based tests of the record boundary (hypothesis): hostile records across every field and
unknown nested fields.

The generator knows what each mutation must lead to (a value PostgreSQL or the contract cannot take
-> that record is quarantined; an odd but valid value -> it loads, exactly), so the expected
warehouse is computed without asking the code under test. Asserted for every example: the window
commits; every record is loaded exactly (raw compared with the bytes sent) or quarantined with its
raw form; none is lost; no older version replaces a newer one, in one load or spread over several
loads in any order.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="taptouch-hypothesis-"))  # nothing written into the checkout

from pipelines.warehouse import records  # noqa: E402
from pipelines.warehouse.loader import OrderWindowLoad, load_stores  # noqa: E402
from taptouch_resource import InvalidRecord  # noqa: E402
from tests.support import factories as f  # noqa: E402

D = Decimal
TZ = "Australia/Melbourne"
STORE = 7101

# -- hostile and benign values -----------------------------------------------------------------

# values PostgreSQL (or JSON) cannot hold: anywhere in a record, they must quarantine it
UNSTORABLE = [
    D("NaN"),
    D("Infinity"),
    D("-Infinity"),
    D("1e-20000"),
    D("1e200000"),
    "a\x00b",
    "\x00D42\x00E",
    "\x00Dfoo\x00E",
    "x\ud800",
    "\udfff",
    {"k\x00": 1},
    {"\ud83d": 1},
    [1, [2, [D("NaN")]]],
    {"deep": {"er": [D("-Infinity")]}},
]
# odd but storable: anywhere unknown, they must load and come back exactly
STORABLE = [
    D("1e400"),
    D("-0.0"),
    D("1.50"),
    D("1E+2"),
    2**70,
    -1,
    0,
    True,
    None,
    "",
    "tab\t\n\r\"'\\",
    "'; drop table taptouch.orders; --",
    "☕🥐 ünïcødé",
    "\\u0000 as text",
    "D42E",
    "x" * 5000,
    {"nested": [1, {"a": "☕", "b": [None, False]}]},
    [],
    {},
    "\u2028\u2029",
    "\ud83d\ude00",
]
BAD_INSTANTS = [
    "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00",
    "9999-12-31T23:59:59.9999999Z",
    "2026-11-02T12:00:00+23:59",
    "2026-11-02T12:00:00+16:00",
    "2026-11-02T12:00:00+00:00:30.5",
    "2026-11-02T12:00:00",
    "2026-11-02",
    "2026-11-02T24:00:00Z",
    "2026-11-02T12:00:60Z",
    "2026-02-30T00:00:00Z",
    "yesterday",
    "",
    "２０２６-11-02T12:00:00Z",
    1764300000,
    None,
    D("NaN"),
]
BAD_IDS = [-1, 2**63, 2**64, D("1.5"), D("1.0"), "12", True, None, D("NaN"), [], {}]
BAD_MONEY = [D("0.001"), "36.60", D("NaN"), D("Infinity"), D("1e10"), D("1e-20000"), True, None, [], D("12.345")]
BAD_TEXT = ["a\x00", "\udc80", 5, [], {}, True]
# (path to a known field, a bad value that field cannot take)
KNOWN_BAD = (
    [(("id",), v) for v in BAD_IDS]
    + [(("store_id",), v) for v in BAD_IDS]
    + [((k,), v) for k in ("created_at", "updated_at") for v in BAD_INSTANTS]
    + [(("completed_at",), v) for v in BAD_INSTANTS if v is not None]
    + [((k,), v) for k in ("subtotal", "discount", "surcharge", "rounding", "tax", "total") for v in BAD_MONEY]
    + [((k,), v) for k in ("number", "source", "status", "currency") for v in BAD_TEXT]
    + [(("items", 0, k), v) for k in ("quantity", "unit_price", "total") for v in BAD_MONEY]
    + [(("items", 0, "id"), v) for v in BAD_IDS]
    + [(("items", 0, "name"), v) for v in BAD_TEXT]
    + [(("items", 0, "modifiers"), v) for v in ("x", 5, {"a": 1}, [1], [{"price": D("NaN")}], [{"price": "0.80"}])]
    + [(("payments", 0, k), v) for k in ("amount",) for v in BAD_MONEY]
    + [(("payments", 0, "paid_at"), v) for v in BAD_INSTANTS if v is not None]
    + [(("customer",), v) for v in (5, "x", [1])]
    + [(("cashier", "id"), v) for v in BAD_IDS if v is not None]
    + [(("items",), v) for v in ("x", 5, {"a": 1}, [1])]
)
UNKNOWN_SITES = [(), ("items", 0), ("items", 0, "modifiers", 0), ("payments", 0), ("cashier",)]


def _set(rec: dict, path: tuple, value) -> None:
    obj = rec
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _site(rec: dict, path: tuple) -> dict:
    obj = rec
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def versions(draw, order_id: int):
    """1-3 versions of one order (distinct instants, nanosecond fractions, any offset), each either
    valid, valid with odd unknown fields, or carrying one value that must quarantine it."""
    n = draw(st.integers(1, 3))
    base = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)
    nanos = draw(st.lists(st.integers(0, 10**9 * 3600), min_size=n, max_size=n, unique=True))
    out = []
    instants = set()
    for ns in nanos:
        offset_min = draw(st.sampled_from([0, 660, -300, 345, 840, -720, 959]))
        local = base + timedelta(microseconds=ns // 1000, minutes=offset_min)
        digits = draw(st.sampled_from([0, 3, 6, 7, 9]))
        if (ns // 10 ** (9 - digits)) * 10 ** (9 - digits) in instants:
            digits = 9  # two versions of one order never share an instant (the tie rule is "last seen")
            while ns in instants:  # its full instant may be another version's shortened one
                ns += 1
        instants.add((ns // 10 ** (9 - digits)) * 10 ** (9 - digits))
        frac = f"{ns % 10**9:09d}"[:digits] if digits else ""
        sign = "+" if offset_min >= 0 else "-"
        off = (
            "Z"
            if offset_min == 0 and draw(st.booleans())
            else f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
        )
        local = local.replace(microsecond=0)
        ts = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{frac}" if frac else "") + off
        rec = f.order(
            order_id,
            store_id=STORE,
            updated_at=ts,
            number=draw(st.sampled_from(["A", "☕ 'x'", "B\\C"])),
            items=[
                f.item(
                    1,
                    draw(st.sampled_from([1, 2, D("0.5")])),
                    "5.50",
                    [{"id": 77, "name": "Oat", "quantity": 1, "price": "0.80"}],
                ),
                f.item(2, 1, "3.00"),
            ],
        )
        rec["updated_at"] = ts
        kind = draw(st.sampled_from(["valid", "unknown-ok", "unknown-bad", "known-bad"]))
        expect = "load"
        if kind == "unknown-ok":
            _site(rec, draw(st.sampled_from(UNKNOWN_SITES)))[draw(st.sampled_from(["x_a", "x_b", "ünï"]))] = draw(
                st.sampled_from(STORABLE)
            )
        elif kind == "unknown-bad":
            _site(rec, draw(st.sampled_from(UNKNOWN_SITES)))["x_bad"] = draw(st.sampled_from(UNSTORABLE))
            expect = "quarantine"
        elif kind == "known-bad":
            path, value = draw(st.sampled_from(KNOWN_BAD))
            _set(rec, path, value)
            expect = "quarantine"
        exact = None
        if expect == "load":
            exact = records.exact_instant(ts)
        out.append((records.as_bytes(rec), expect, exact))
    return out


def pages_of(draw, recs: list) -> list[list]:
    recs = list(recs)
    random.Random(draw(st.integers(0, 2**32))).shuffle(recs)
    cut = draw(st.integers(0, len(recs)))
    return [p for p in (recs[:cut], recs[cut:]) if p]


# -- the pure boundary: total, and what it loads is what the precise path builds -------------------
# (the fast path's own contract: test_fast_path_contract.py)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_boundary_is_total_and_loads_what_the_precise_path_builds(data):
    for raw, expect, _ in data.draw(versions(1)):
        try:
            rows = records.order_rows(raw, TZ, STORE)
        except InvalidRecord as exc:
            assert expect == "quarantine", f"refused a valid record: {exc.reason}\n{raw[:300]!r}"
            assert exc.reason
            continue
        assert expect == "load", f"accepted a record that must be quarantined: {raw[:300]!r}"
        precise = records._order_precise(records._DECODERS["order"].decode(raw), raw, TZ, STORE)
        assert rows == precise
        assert rows.raw.encode() == raw  # raw is the bytes as sent


# -- through the loader into PostgreSQL ---------------------------------------------------------

_counter = itertools.count(1)


@pytest.fixture(scope="module")
def pg(make_database):
    from pipelines.warehouse.migrations import migrate

    url = make_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, TZ)])
        yield conn


def _expected(all_versions: dict[int, list]) -> dict[int, bytes]:
    """order id -> bytes of the version that must be in the warehouse (the newest that can load)."""
    out = {}
    for oid, vs in all_versions.items():
        loadable = [(exact, raw) for raw, expect, exact in vs if expect == "load"]
        if loadable:
            out[oid] = max(loadable)[1]
    return out


def _check(conn, window_ids: list[int], expected: dict[int, bytes], hostile: int, windows: list[str]) -> None:
    got = dict(
        conn.execute(
            "select order_id, raw::text from taptouch.orders where order_id = any(%s)", (window_ids,)
        ).fetchall()
    )
    assert set(got) == set(expected), "an order is missing, or one that must be quarantined loaded"
    for oid, raw in expected.items():
        same = conn.execute(
            "select raw = %s::jsonb, updated_at_exact from taptouch.orders where order_id = %s", (raw.decode(), oid)
        ).fetchone()
        assert same[0], f"order {oid}: the warehouse does not hold the newest valid version exactly"
        items = conn.execute("select count(*) from taptouch.order_items where order_id = %s", (oid,)).fetchone()[0]
        assert items == 2
    q = conn.execute(
        "select count(*), count(*) filter (where reason <> '' and (raw is not null or raw_text is not null))"
        ' from taptouch.quarantine where "window" = any(%s)',
        (windows,),
    ).fetchone()
    assert q[0] == q[1] == hostile, "every hostile record is quarantined once, with a reason and its raw form"


@settings(
    max_examples=12,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
@pytest.mark.postgres
def test_window_commits_every_record_exact_or_quarantined_newest_wins(pg, data):
    n = next(_counter)
    ids = [n * 1000 + i for i in range(data.draw(st.integers(1, 4)))]
    all_versions = {oid: data.draw(versions(oid)) for oid in ids}
    flat = [v for vs in all_versions.values() for v in vs]
    hostile = sum(1 for _, e, _ in flat if e == "quarantine")
    expected = _expected(all_versions)
    # one window, the versions shuffled over two pages
    window = f"prop-{n}"
    with OrderWindowLoad(pg, window=window, batch_size=data.draw(st.sampled_from([1, 3, 5000]))) as load:
        for page in pages_of(data.draw, [raw for raw, _, _ in flat]):
            load.add_page(STORE, page)
        load.finish()
    _check(pg, ids, expected, hostile, [window])
    # the same versions again, each in a window of its own, in another order: nothing moves backwards
    raws = [raw for raw, _, _ in flat]
    random.Random(data.draw(st.integers(0, 2**32))).shuffle(raws)
    windows = [window]
    for i, raw in enumerate(raws):
        w = f"prop-{n}-{i}"
        windows.append(w)
        with OrderWindowLoad(pg, window=w) as load:
            load.add_page(STORE, [raw])
            load.finish()
    _check(pg, ids, expected, 2 * hostile, windows)
