"""Ground truth computed independently from a sandbox's records: plain Python, Decimal, zoneinfo.

These follow the warehouse contract (docs/warehouse.md), so a test can compare the warehouse with them directly.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from taptouch_sandbox import Sandbox

SALES_STATUSES = frozenset({"completed", "partially_refunded", "refunded"})
CENT = Decimal("0.01")


def business_date(order: dict, timezone: str) -> date:
    """The calendar date of created_at in the store's own time zone."""
    return datetime.fromisoformat(order["created_at"]).astimezone(ZoneInfo(timezone)).date()


def orders_by_id(sb: Sandbox) -> dict[int, dict]:
    """Every order of every store in its latest state, by id (clean records)."""
    return {o["id"]: o for sid in sb.store_ids() for o in sb.orders(sid)}


def orders_updated_in_days(sb: Sandbox, days: list[str | date]) -> dict[int, dict]:
    """Latest version of every order whose updated_at lies in one of these UTC days (what the daily
    ``orders`` partitions of those days load), by id."""
    out: dict[int, dict] = {}
    for d in days:
        d = date.fromisoformat(d) if isinstance(d, str) else d
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        for sid in sb.store_ids():
            for o in sb.orders_in_window(sid, start, start + timedelta(days=1)):
                out[o["id"]] = o
    return out


def daily_store_sales(sb: Sandbox, store_ids: list[int] | None = None) -> dict[tuple[int, date], dict]:
    """analytics.daily_store_sales: {(store_id, business_date): {order_count, gross_sales, discounts,
    refunds, net_sales, tax, avg_order_value}} for every store-day with sales."""
    tz = {s["id"]: s["timezone"] for s in sb.stores()}
    acc: dict[tuple[int, date], dict] = defaultdict(
        lambda: {
            "order_count": 0,
            "gross_sales": Decimal("0.00"),
            "discounts": Decimal("0.00"),
            "refunds": Decimal("0.00"),
            "total": Decimal("0.00"),
            "tax": Decimal("0.00"),
        }
    )
    for sid in store_ids if store_ids is not None else sb.store_ids():
        for order in sb.orders(sid):
            if order["status"] not in SALES_STATUSES:
                continue
            row = acc[(sid, business_date(order, tz[sid]))]
            row["order_count"] += 1
            row["gross_sales"] += order["subtotal"]
            row["discounts"] += order["discount"]
            row["refunds"] += sum((r["amount"] for r in order["refunds"]), Decimal("0.00"))
            row["total"] += order["total"]
            row["tax"] += order["tax"]
    out = {}
    for key in sorted(acc):
        row = acc[key]
        total = row.pop("total")
        row["net_sales"] = total - row["refunds"]
        row["avg_order_value"] = (total / row["order_count"]).quantize(CENT, rounding=ROUND_HALF_UP)
        out[key] = {
            k: row[k]
            for k in ("order_count", "gross_sales", "discounts", "refunds", "net_sales", "tax", "avg_order_value")
        }
    return out


def inventory_levels(sb: Sandbox) -> dict[tuple[int, int], dict]:
    """inventory_levels: {(store_id, product_id): stock record} as the API lists them now."""
    return {(sid, r["product_id"]): r for sid in sb.store_ids() for r in sb.inventory(sid)}
