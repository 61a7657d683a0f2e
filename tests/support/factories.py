"""Hand-built API records for loader tests (valid by construction: the §4 arithmetic holds)."""

from __future__ import annotations

from decimal import Decimal

D = Decimal


def store(store_id=7101, tz="Australia/Melbourne", updated_at="2026-10-02T10:15:00+10:00", **kw):
    rec = {
        "id": store_id,
        "name": f"Store {store_id}",
        "business_name": "Group Pty Ltd",
        "status": "active",
        "timezone": tz,
        "currency": "AUD",
        "address": {
            "line1": "12 Swan St",
            "line2": None,
            "suburb": "Richmond",
            "state": "VIC",
            "postcode": "3121",
            "country": "AU",
        },
        "phone": "+61 3 9000 0000",
        "email": "s@example.com",
        "created_at": "2023-04-01T09:00:00+11:00",
        "updated_at": updated_at,
    }
    rec.update(kw)
    return rec


def item(item_id, qty=1, price="5.50", mods=(), discount="0.00", name="Latte", category="Coffee"):
    mod_sum = sum((D(m["price"]) * m.get("quantity", 1) for m in mods), D(0))
    total = (D(qty) * (D(price) + mod_sum) - D(discount)).quantize(D("0.01"))
    return {
        "id": item_id,
        "product_id": 3300 + item_id,
        "sku": f"SKU-{item_id}",
        "name": name,
        "category": category,
        "quantity": qty,
        "unit_price": D(price),
        "discount": D(discount),
        "tax": (total / 11).quantize(D("0.01")),
        "total": total,
        "modifiers": [dict(m, price=D(m["price"])) for m in mods],
    }


def order(
    order_id,
    *,
    store_id=7101,
    created_at="2026-11-02T12:31:05+11:00",
    updated_at=None,
    status="completed",
    items=None,
    discount="0.00",
    surcharge="0.00",
    rounding="0.00",
    refunds=(),
    method="visa",
    number=None,
    **extra,
):
    items = (
        items
        if items is not None
        else [
            item(1, 2, "5.50", [{"id": 77, "name": "Oat milk", "quantity": 1, "price": "0.80"}]),
            item(2, 1, "24.00", name="Big breakfast", category="Food"),
        ]
    )
    subtotal = sum((i["total"] for i in items), D("0.00"))
    total = subtotal - D(discount) + D(surcharge) + D(rounding)
    updated_at = updated_at or created_at
    rec = {
        "id": order_id,
        "number": number or f"A-{order_id}",
        "store_id": store_id,
        "source": "pos",
        "fulfillment_type": "dine_in",
        "status": status,
        "cashier": {"id": 17, "name": "Jess"},
        "customer": None,
        "created_at": created_at,
        "updated_at": updated_at,
        "completed_at": None if status == "open" else updated_at,
        "currency": "AUD",
        "subtotal": subtotal,
        "discount": D(discount),
        "surcharge": D(surcharge),
        "rounding": D(rounding),
        "tax": (total / 11).quantize(D("0.01")),
        "total": total,
        "tips": D("0.00"),
        "redeem_points": 0,
        "items": items,
        "payments": []
        if status == "open"
        else [
            {
                "id": order_id * 10,
                "method": method,
                "amount": total,
                "tip": D("0.00"),
                "surcharge": D(surcharge),
                "paid_at": updated_at,
            }
        ],
        "refunds": [
            {"id": order_id * 10 + j, "amount": D(a), "reason": "wrong order", "refunded_at": updated_at}
            for j, a in enumerate(refunds, 1)
        ],
    }
    rec.update(extra)
    return rec


def inventory(product_id, on_hand="12.5", updated_at="2026-11-27T08:00:00+11:00", **kw):
    rec = {
        "product_id": product_id,
        "sku": f"P-{product_id}",
        "name": f"Product {product_id}",
        "category": "Coffee",
        "unit": "kg",
        "on_hand": D(on_hand),
        "reorder_level": 5,
        "cost_price": D("18.20"),
        "sell_price": D("32.00"),
        "updated_at": updated_at,
    }
    rec.update(kw)
    return rec
