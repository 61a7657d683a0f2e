"""The record boundary: every value lands exactly or quarantines one record.

Each probe found by hand is here as a regression: through the loader into a real PostgreSQL
(the window commits, the valid record next to the bad one loads, the bad one is quarantined with
its raw form) or through the client (a malformed listing is an error, never an empty list).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import httpx
import psycopg
import pytest

from pipelines.warehouse import records
from pipelines.warehouse.loader import OrderWindowLoad, load_inventory, load_stores
from taptouch_resource import InvalidRecord, TaptouchClient, TaptouchProtocolError, api
from tests.support import factories as f

D = Decimal
TZ = "Australia/Melbourne"


def conn_for(url):
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def db(migrated_db):
    with conn_for(migrated_db) as conn:
        load_stores(conn, [f.store(7101, TZ)])
        yield conn


def q(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall()


def load_raw(conn, raws, window="2026-11-02"):
    """Load records given as the exact bytes an API sent."""
    with OrderWindowLoad(conn, window=window) as load:
        load.add_page(7101, raws)
        return load.finish()


def order_bytes(order_id, **changes) -> bytes:
    return records.dumps(f.order(order_id, **changes)).encode()


def with_field(order_id: int, text: str) -> bytes:
    """A valid order's bytes with ``text`` spliced in as the JSON of an extra field (a hostile server
    writes whatever it likes; the test writes the exact bytes)."""
    body = order_bytes(order_id)
    return body[:-1] + b',"x_probe":' + text.encode() + b"}"


# ---------------------------------------------------------------------------------------------
# values that used to fail the whole window: now one quarantined record each

PROBES = [
    ("NaN in an unknown field", with_field(11, "NaN"), "not a finite number"),
    ("Infinity nested in an unknown field", with_field(12, '{"a":[1,{"b":-Infinity}]}'), "not a finite number"),
    ("1e-20000 in an unknown field", with_field(13, "1e-20000"), "PostgreSQL cannot store"),
    ("1e999999 in an unknown field", with_field(14, "1e999999"), "PostgreSQL cannot store"),
    ("NUL in an unknown field", with_field(15, '"a\\u0000b"'), "NUL"),
    ("lone surrogate in an unknown field", with_field(16, '"\\udfff"'), "surrogate"),
    ("NUL in a nested key", with_field(17, '{"k\\u0000":1}'), "NUL"),
    ("invalid UTF-8 bytes", with_field(18, '"caf\xe9"').replace("é".encode(), b"\xe9"), "UTF-8"),
    ("nesting deeper than can be stored", with_field(19, "[" * 3000 + "]" * 3000), "nested too deep"),
    ("year 1 with +05:00", order_bytes(20, created_at="0001-01-01T00:00:00+05:00"), "outside years 1-9999"),
    ("9999-12-31T23:59:59-05:00", order_bytes(21, updated_at="9999-12-31T23:59:59-05:00"), "outside years 1-9999"),
    (
        "the last day of year 9999",
        order_bytes(22, updated_at="9999-12-31T23:59:59.9999999Z"),
        "within a day of those limits",
    ),
    ("the first day of year 1", order_bytes(27, created_at="0001-01-01T12:00:00Z"), "within a day of those limits"),
    ("offset +23:59", order_bytes(23, created_at="2026-11-02T12:31:05+23:59"), "offset PostgreSQL refuses"),
    ("offset +00:00:30.5", order_bytes(24, created_at="2026-11-02T12:31:05+00:00:30.5"), "offset with seconds"),
    ("hour 24", order_bytes(25, created_at="2026-11-02T24:00:00+11:00"), "not a valid date"),
    ("leap second", order_bytes(26, created_at="2026-11-02T12:59:60+11:00"), "not a valid date"),
    ("February 30", order_bytes(27, created_at="2026-02-30T12:00:00+11:00"), "not a valid date"),
    ("unicode digits in a timestamp", order_bytes(28, created_at="２０２６-11-02T12:31:05+11:00"), "ISO 8601"),
    ("id beyond bigint", order_bytes(29).replace(b'"id":29,', b'"id":9223372036854775808,', 1), "out of range"),
    ("negative id", order_bytes(30).replace(b'"id":30,', b'"id":-30,', 1), "out of range"),
    ("item id a float", order_bytes(31).replace(b'"items":[{"id":1,', b'"items":[{"id":1.0,', 1), "integer id"),
    ("money as a string", order_bytes(32).replace(b'"tax":3.33', b'"tax":"3.33"', 1), "JSON number"),
    ("quantity as a string", order_bytes(33).replace(b'"quantity":2,', b'"quantity":"2",', 1), "JSON number"),
    (
        "money beyond numeric(12,2)",
        order_bytes(34).replace(b'"tips":0.00', b'"tips":1e10', 1),
        "out of range for money",
    ),
    (
        "0.1234567890123456789012345 cents",
        order_bytes(35).replace(b'"tips":0.00', b'"tips":0.0000000000000000000000001', 1),
        "more than 2 decimals",
    ),
    ("status true", order_bytes(36).replace(b'"status":"completed"', b'"status":true', 1), "must be text"),
    (
        "items an object",
        order_bytes(37).replace(b'"items":[', b'"items":{"a":[', 1).replace(b'],"payments"', b']},"payments"', 1),
        "items must be",
    ),
    ("modifiers a string", order_bytes(38).replace(b'"modifiers":[{', b'"modifiers":"x","y":[{', 1), "modifiers"),
    ("NaN as a modifier price", order_bytes(39).replace(b'"price":0.80', b'"price":NaN', 1), "not a finite number"),
    ("duplicate item ids", order_bytes(40, items=[f.item(1, 1, "2.00"), f.item(1, 1, "3.00")]), "appears twice"),
    ("truncated record", order_bytes(41)[:-1], "not valid JSON"),
]


@pytest.mark.parametrize("name,raw,fragment", PROBES, ids=[p[0] for p in PROBES])
def test_probe_quarantines_only_its_record(db, name, raw, fragment):
    good = order_bytes(1)
    counts = load_raw(db, [good, raw, order_bytes(2)])
    assert (counts.inserted, counts.quarantined) == (2, 1), name
    reason, raw_json, raw_text = q(db, "select reason, raw::text, raw_text from taptouch.quarantine")[0]
    assert fragment in reason
    assert raw_json is not None or raw_text is not None  # its raw form is kept
    if name == "nesting deeper than can be stored":
        assert q(db, "select record_key from taptouch.quarantine") == [("19",)]
    assert q(db, "select order_id from taptouch.orders order by 1") == [(1,), (2,)]


def test_quarantined_raw_is_text_when_not_json(db):
    load_raw(db, [with_field(50, "NaN")])
    raw_json, raw_text = q(db, "select raw, raw_text from taptouch.quarantine")[0]
    assert raw_json is None and raw_text.endswith(',"x_probe":NaN}')
    assert q(db, "select record_key from taptouch.quarantine") == [("50",)]


def test_marker_texts_are_never_numbers(db):
    # "\u0000D42\u0000E" used to be stored as the number 42 and "\u0000Dfoo\u0000E" crashed the window
    texts = ["\x00D42\x00E", "\x00Dfoo\x00E"]
    raws = [order_bytes(60 + i, number=t) for i, t in enumerate(texts)]
    lookalike = order_bytes(62, number="D42E \\u0000D42\\u0000E")  # no NUL: a backslash and letters
    counts = load_raw(db, raws + [lookalike])
    assert (counts.inserted, counts.quarantined) == (1, 2)
    assert q(db, "select raw->>'number' from taptouch.quarantine order by record_key") == [
        ("\\u0000D42\\u0000E",),
        ("\\u0000Dfoo\\u0000E",),
    ]
    assert q(db, "select number, raw->>'number', jsonb_typeof(raw->'number') from taptouch.orders") == [
        ("D42E \\u0000D42\\u0000E", "D42E \\u0000D42\\u0000E", "string")
    ]


def test_raw_is_exactly_what_the_api_sent(db):
    # unknown fields at any depth, number spelling (45.50, 1E+2, -0.0, 1e400), escapes, key order
    body = order_bytes(70)[:-1] + (
        b',"x_b":{"z":[1.50,{"deep":1E+2}],"a":-0.0},"x_big":1e400,"x_esc":"tab\\t \\"q\\" \\u00e9 \\ud83d\\ude00"}'
    )
    assert load_raw(db, [body]).inserted == 1
    got = q(db, "select raw = %s::jsonb, raw->'x_b'->'z'->>0, raw->>'x_esc' from taptouch.orders", body.decode())[0]
    assert got == (True, "1.50", 'tab\t "q" é 😀')


def test_seven_digit_fractions_keep_their_order(db):
    newer = order_bytes(80, updated_at="2026-11-02T12:40:00.1234569Z", number="newer")
    older = order_bytes(80, updated_at="2026-11-02T12:40:00.1234561Z", number="older")
    load_raw(db, [newer])
    counts = load_raw(db, [older])  # 0.8 microseconds older, loaded later
    assert (counts.updated, counts.unchanged) == (0, 1)
    # within one load too, whatever the order on the page
    load_raw(
        db,
        [
            order_bytes(81, updated_at="2026-11-02T12:40:00.123456901Z", number="newer"),
            order_bytes(81, updated_at="2026-11-02T12:40:00.1234569Z", number="older"),
        ],
    )
    whole = D(int(datetime(2026, 11, 2, 12, 40, tzinfo=UTC).timestamp()))
    assert q(db, "select order_id, number, updated_at_exact from taptouch.orders order by 1") == [
        (80, "newer", whole + D("0.1234569")),
        (81, "newer", whole + D("0.123456901")),
    ]
    # the newer version then arrives again: unchanged
    assert load_raw(db, [newer]).unchanged == 1


def test_store_with_nan_in_address_costs_only_that_store(db):
    bad = records.dumps(f.store(7102, "Australia/Perth"))[:-1].replace('"suburb":"Richmond"', '"suburb":NaN') + "}"
    counts = load_stores(
        db,
        [
            bad.encode(),
            f.store(7103, "Pacific/Auckland"),
            records.dumps(f.store(7104, "UTC", updated_at="0001-01-01T00:00:00+05:00")).encode(),
        ],
    )
    assert (counts.inserted, counts.quarantined) == (1, 2)
    reasons = dict(q(db, "select record_key, reason from taptouch.quarantine where entity = 'store'"))
    assert "not a finite number" in reasons["7102"] and "outside years" in reasons["7104"]


def test_stores_newest_wins_at_full_precision(db):
    load_stores(db, [f.store(7105, "UTC", name="newer", updated_at="2026-10-02T10:15:00.0000009Z")])
    load_stores(db, [f.store(7105, "UTC", name="older", updated_at="2026-10-02T10:15:00.0000001Z")])
    assert q(db, "select name from taptouch.stores where store_id = 7105") == [("newer",)]


def test_inventory_newest_wins_and_older_listing_deletes_nothing_newer(db):
    day = date(2026, 11, 27)
    newer = [
        f.inventory(1, on_hand="5", updated_at="2026-11-27T09:00:00.0000002+11:00"),
        f.inventory(2, on_hand="7", updated_at="2026-11-27T09:30:00+11:00"),
    ]  # product 2 is new
    older = [f.inventory(1, on_hand="99", updated_at="2026-11-27T09:00:00.0000001+11:00")]
    older_requested = q(db, "select clock_timestamp()")[0][0]  # the older listing was asked for first
    load_inventory(db, 7101, newer, snapshot_date=day)
    counts = load_inventory(db, 7101, older, snapshot_date=day, listed_since=older_requested)  # committed later
    assert (counts.updated, counts.deleted) == (0, 0)
    assert q(db, "select product_id, on_hand from taptouch.inventory_levels order by 1") == [(1, D(5)), (2, D(7))]
    assert q(db, "select product_id, on_hand from taptouch.inventory_snapshots order by 1") == [(1, D(5)), (2, D(7))]
    # a newer complete listing without product 2 delists it
    counts = load_inventory(
        db, 7101, [f.inventory(1, on_hand="4", updated_at="2026-11-27T10:00:00+11:00")], snapshot_date=day
    )
    assert (counts.updated, counts.deleted) == (1, 1)
    assert q(db, "select product_id, on_hand from taptouch.inventory_levels") == [(1, D(4))]


def test_inventory_the_most_recently_updated_product_is_delisted_like_any_other(db):
    """The product restocked last stops being listed: the next listing delists it, although it is
    newer than every level that listing holds (the old guard kept it until another product changed)."""
    day = date(2026, 3, 6)
    restocked_last = f.inventory(5, updated_at="2026-03-05T09:00:00+11:00")
    rest = [f.inventory(pid, updated_at="2026-03-01T08:00:00+11:00") for pid in (1, 2, 3, 4)]
    load_inventory(db, 7101, [*rest, restocked_last], snapshot_date=day)
    counts = load_inventory(db, 7101, rest, snapshot_date=day)
    assert counts.deleted == 1
    assert q(db, "select product_id from taptouch.inventory_levels order by 1") == [(1,), (2,), (3,), (4,)]
    assert q(db, "select product_id from taptouch.inventory_snapshots order by 1") == [(1,), (2,), (3,), (4,)]


def test_inventory_bad_values_quarantined(db):
    recs = [
        f.inventory(1),
        dict(f.inventory(2), on_hand=D("NaN")),
        dict(f.inventory(3), on_hand=D("1e-20000")),
        dict(f.inventory(4), x_extra=D("1e-20000")),
        f.inventory(5, updated_at="9999-12-31T23:59:59-05:00"),
    ]
    counts = load_inventory(db, 7101, recs, snapshot_date=date(2026, 11, 27))
    assert (counts.inserted, counts.quarantined) == (1, 4)
    assert q(db, "select product_id from taptouch.inventory_levels") == [(1,)]


# ---------------------------------------------------------------------------------------------
# the boundary without a database


def test_parse_functions_raise_only_invalid_record():
    for raw in (b"", b"[]", b"null", b"\xff", b'{"id":' + b"9" * 5000 + b"}", "x", 5, None, {"id": {}}):
        with pytest.raises(InvalidRecord):
            records.order_rows(raw, TZ)
        with pytest.raises(InvalidRecord):
            records.parse_store(raw)
        with pytest.raises(InvalidRecord):
            records.parse_inventory(raw, 1)


def test_dict_views_of_the_rows():
    row = records.parse_store(f.store(7101, TZ))
    assert row["store_id"] == 7101 and row["timezone"] == TZ and row["address"]["suburb"] == "Richmond"
    assert records.record_key("order", b'{"id": 5}') == "5"
    parsed = records.parse_order(f.order(3), TZ)
    assert parsed["order"]["order_id"] == 3 and parsed["order"]["business_date"] == date(2026, 11, 2)
    assert parsed["items"][0]["modifiers"] == [{"id": 77, "name": "Oat milk", "quantity": 1, "price": D("0.80")}]


def test_exact_instant_keeps_every_digit():
    assert records.exact_instant("2026-11-02T12:40:00.1234569Z") > records.exact_instant("2026-11-02T12:40:00.1234561Z")
    assert records.exact_instant("1970-01-01T00:00:01.5+00:00") == D("1.5")
    assert records.exact_instant("1969-12-31T23:59:59.7Z") == D("-0.3")
    assert records.instant("2026-11-02T12:40:00+11:00") == datetime(2026, 11, 2, 1, 40, tzinfo=UTC)


def test_fractions_beyond_microseconds_are_cut_never_rounded_into_the_next_day(db):
    counts = load_raw(
        db,
        [
            order_bytes(90, updated_at="2026-11-02T23:59:59.999999999Z", number="last of the day"),
            order_bytes(91, updated_at="2026-11-02T12:00:00.0000005Z"),
        ],
    )
    assert (counts.inserted, counts.quarantined) == (2, 0)
    assert q(db, "select order_id, updated_at from taptouch.orders order by 1") == [
        (90, datetime(2026, 11, 2, 23, 59, 59, 999999, tzinfo=UTC)),  # still 2 November
        (91, datetime(2026, 11, 2, 12, 0, tzinfo=UTC)),
    ]
    assert q(db, "select updated_at_exact % 1 from taptouch.orders where order_id = 90") == [(D("0.999999999"),)]
    # the last nanosecond of the last readable day is in range (rounding would have crossed into the next)
    assert records.instant("9999-12-30T23:59:59.999999999+00:00") == datetime(
        9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC
    )


# ---------------------------------------------------------------------------------------------
# destructive replaces only from complete, well-formed listings

TOKEN = (
    b'{"access_token":"t","token_type":"Bearer","expires_in":3600,'
    b'"scope":"integration.store integration.order integration.inventory"}'
)


def client_serving(body: bytes, page_size: int = 5) -> TaptouchClient:
    def handler(request):
        if request.url.path == api.TOKEN_PATH:
            return httpx.Response(200, content=TOKEN)
        return httpx.Response(200, content=body)

    return TaptouchClient(
        client_id="c",
        client_secret="s",
        transport=httpx.MockTransport(handler),
        page_size=page_size,
        requests_per_second=None,
        sleep=lambda s: None,
        max_retries=1,
    )


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b'{"status":{"ack":200}}', "'data' is missing"),
        (b'{"status":{"ack":200},"data":null}', "'data' is null"),
        (b'{"status":{"ack":200},"data":{"product_id":1}}', "not a list"),
        (b'{"status":{"ack":200},"data":"[]"}', "not a list"),
        (b'{"status":{"ack":200},"data":NaN}', "not a list"),
        (b'{"status":{"ack":200},"data":[1,2,3,4,5,6]}', "more than the 5"),
    ],
)
def test_malformed_listing_is_a_protocol_error_not_an_empty_list(body, fragment):
    with client_serving(body) as client:
        with pytest.raises(TaptouchProtocolError, match=fragment):
            list(client.iter_inventory(7101))
        with pytest.raises(TaptouchProtocolError, match=fragment):
            list(client.list_stores())


def test_empty_data_is_an_empty_listing():
    with client_serving(b'{"status":{"ack":200},"data":[]}') as client:
        assert list(client.iter_inventory(7101)) == []


def test_one_non_json_record_keeps_its_page_and_its_bytes():
    body = b'{"status":{"ack":200,"errors":null},"data":[{"id":1,"v":1.50},{"id":2,"v":NaN},{"id":3,"s":"\xe9"}]}'
    with client_serving(body) as client:
        pages = list(
            client.iter_order_record_pages(
                7101, updated_from=datetime(2026, 11, 2, tzinfo=UTC), updated_to=datetime(2026, 11, 3, tzinfo=UTC)
            )
        )
        assert pages == [[b'{"id":1,"v":1.50}', b'{"id":2,"v":NaN}', b'{"id":3,"s":"\xe9"}']]
        parsed = list(client.iter_inventory(7101))
    assert parsed[0] == {"id": 1, "v": D("1.50")} and parsed[1]["v"].is_nan() and parsed[2] == b'{"id":3,"s":"\xe9"}'


def test_a_record_nested_deeper_than_the_parsers_costs_only_itself():
    deep = b'{"id":2,"x":' + b"[" * 3000 + b'"]\\""' + b"]" * 3000 + b"}"
    body = b'{"status":{"ack":200},"data":[{"id":1},' + deep + b',{"id":3}]}'
    with client_serving(body) as client:
        records_ = list(client.iter_inventory(7101))
    assert records_[0] == {"id": 1} and records_[1] == deep and records_[2] == {"id": 3}
    with pytest.raises(InvalidRecord, match="nested too deep"):
        records.order_rows(deep, TZ)
    assert records.record_key("order", deep) == "2"  # its quarantine row still names the order


def test_inventory_raw_is_the_bytes_the_api_sent(db):
    """sync_inventory stages each level's own bytes: key order, number spelling and unknown fields
    survive in ``raw`` exactly, as for orders."""
    from pipelines.sync import sync_inventory

    level = (
        b'{"updated_at":"2026-11-27T08:00:00.1234567+11:00","product_id":3301,"sku":"LAT","name":"Latte beans",'
        b'"category":"Coffee","unit":"kg","on_hand":12.50,"reorder_level":5E0,"cost_price":18.20,'
        b'"sell_price":32.00,"x_new":{"b":1,"a":[1.0,-0]}}'
    )
    body = b'{"status":{"ack":200,"errors":null},"data":[' + level + b"]}"
    with client_serving(body) as client:
        result = sync_inventory(
            client, db, store_ids=[7101], timezones={7101: TZ}, now=datetime(2026, 11, 27, tzinfo=UTC)
        )
    assert result.failures == [] and result.counts.inserted == 1
    [(same, on_hand, reorder, spelled)] = q(
        db,
        "select raw = %s::jsonb, on_hand, reorder_level, raw->'x_new'->>'a' from taptouch.inventory_levels",
        level.decode(),
    )
    assert same and spelled == "[1.0, 0]" and (on_hand, reorder) == (D("12.50"), D("5"))


@pytest.mark.parametrize(
    "tz",
    ["localtime", "posixrules", "Factory", "right/UTC", "posix/Europe/Paris", "Mars/Olympus", "../../etc/passwd", ""],
)
def test_a_store_zone_that_is_not_a_place_is_quarantined(tz):
    """Business dates must not depend on the machine: ``localtime`` is the loader's own zone."""
    with pytest.raises(InvalidRecord, match="timezone"):
        records.parse_store(f.store(7101, tz))


@pytest.mark.parametrize("tz", ["UTC", "Etc/GMT-14", "Asia/Kathmandu", "America/Argentina/ComodRivadavia"])
def test_unusual_but_real_store_zones_load(tz):
    assert records.parse_store(f.store(7101, tz))["timezone"] == tz
