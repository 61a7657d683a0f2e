"""The warehouse's entities, each declared once: one :class:`Field` per column (its JSON path in the
API record, kind, limits, whether it is required, and its column comment).

Everything else is derived from these declarations: the msgspec types and both validation paths of
the record boundary (:mod:`.records`), the column tuples the loader copies (``records.ORDER_COLS``
...), the fields the schema-drift check counts as carried (``pipelines.checks.SHAPES``) and the
column comments (:mod:`.catalog`). Adding a column: a migration and one line here (docs/warehouse.md,
"Adding a column").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# Kinds of field, each with the rules of docs/warehouse.md "Quarantine":
ID = "id"  # an integer id, 0..bigint max
MONEY = "money"  # a JSON number exact to the cent within numeric(12,2)
QUANTITY = "quantity"  # a JSON number numeric can hold, at most 1e15 in size
TEXT = "text"  # text of at most ``limit`` characters; a required text must not be blank
INSTANT = "instant"  # an RFC 3339 timestamp with a UTC offset, readable back in years 1-9999
OBJECT = "object"  # a JSON object (or null) stored whole as jsonb
LIST = "list"  # a JSON list of ``of`` records, each validated, stored whole as jsonb
DERIVED = "derived"  # not read from the record: given by the boundary (the parent's key, a business date)

TEXT_MAX = 100_000  # characters of one known text field
SHORT_TEXT_MAX = 200
CURRENCY_MAX = 10
ZERO = Decimal("0.00")
MONEY_TEXT = "numeric(12,2), in the store's currency (taptouch.stores.currency)"


@dataclass(frozen=True)
class Field:
    """One column: where its value is in the API record, and what the value must be."""

    column: str | None  # the warehouse column (None: validated, stored inside its parent's JSON)
    path: str | None  # dotted path in the record ("customer.id"); None for DERIVED
    kind: str
    doc: str = ""  # the column comment (money columns get MONEY_TEXT appended)
    required: bool = False  # null or absent sends the record to quarantine
    limit: int = TEXT_MAX  # TEXT: characters
    default: Any = None  # stored when the field is null or absent
    positive: bool = False  # QUANTITY: must be > 0
    of: Entity | None = None  # LIST: what each element is

    @property
    def comment(self) -> str:
        return f"{self.doc}; {MONEY_TEXT}" if self.kind == MONEY else self.doc

    @property
    def json_path(self) -> str:
        """``path``, of a field read from the record (a DERIVED field has none: an error)."""
        if self.path is None:
            raise ValueError(f"{self.column}: a derived field has no path in the record")
        return self.path

    @property
    def column_name(self) -> str:
        """``column``, of a field with a column of its own (one kept inside its parent's JSON: an error)."""
        if self.column is None:
            raise ValueError(f"{self.path}: the field is stored inside its parent's column")
        return self.column

    @property
    def element(self) -> Entity:
        """``of``, what each element of a LIST field is (another field: an error)."""
        if self.of is None:
            raise ValueError(f"{self.column or self.path}: not a list of records")
        return self.of


@dataclass(frozen=True)
class Entity:
    """One kind of API record and its warehouse table."""

    name: str  # the word in reasons and in taptouch.quarantine.entity
    table: str | None  # None: stored inside a parent's column (a modifier)
    fields: tuple[Field, ...]
    lines: tuple[tuple[str, Entity], ...] = ()  # JSON lists of records loaded into child tables
    key: str | None = None  # the record's id field (unique among an order's lines)
    seen_column: str = "loaded_at"  # when the pipeline last wrote the row
    kept_in_raw: frozenset[str] = frozenset()  # known fields deliberately left in raw only

    @property
    def table_name(self) -> str:
        """``table``, of an entity with a table of its own (a modifier has none: an error)."""
        if self.table is None:
            raise ValueError(f"{self.name} is stored inside its parent's column: it has no table")
        return self.table

    @property
    def columns(self) -> tuple[str, ...]:
        """The table's columns the boundary fills, in the loader's order."""
        return tuple(f.column for f in self.fields if f.column is not None)

    def with_field(self, field: Field) -> Entity:
        """This entity with one more column at the end (what a migration adding a column pairs with)."""
        return Entity(
            self.name, self.table, self.fields + (field,), self.lines, self.key, self.seen_column, self.kept_in_raw
        )


def _order_id() -> Field:
    return Field("order_id", None, DERIVED, "the order (taptouch.orders.order_id)")


MODIFIER = Entity(
    "modifier",
    None,
    key=None,
    fields=(
        Field(None, "price", MONEY, required=True),
        Field(None, "quantity", QUANTITY),
    ),
)

ITEM = Entity(
    "item",
    "taptouch.order_items",
    key="id",
    fields=(
        _order_id(),
        Field("item_id", "id", ID, "the line's id within the order", required=True),
        Field("product_id", "product_id", ID, "the product (null for lines without one)"),
        Field("sku", "sku", TEXT, "the product's SKU on the line"),
        Field("name", "name", TEXT, "the product's name on the line"),
        Field("category", "category", TEXT, "the product's category on the line"),
        Field("quantity", "quantity", QUANTITY, "units sold", required=True, positive=True),
        Field("unit_price", "unit_price", MONEY, "unit price, GST-inclusive", required=True),
        Field("discount", "discount", MONEY, "item-level discount", default=ZERO),
        Field("tax", "tax", MONEY, "GST included in the line total", default=ZERO),
        Field("total", "total", MONEY, "quantity × (unit price + modifiers) − item discount", required=True),
        Field(
            "modifiers",
            "modifiers",
            LIST,
            "the line's modifiers as the API sends them (JSON array of name, price, quantity)",
            of=MODIFIER,
        ),
    ),
)

PAYMENT = Entity(
    "payment",
    "taptouch.order_payments",
    key="id",
    fields=(
        _order_id(),
        Field("payment_id", "id", ID, "the payment's id within the order", required=True),
        Field(
            "method",
            "method",
            TEXT,
            "cash | visa | mastercard | amex | eftpos | gift_card | points (as the API sends it)",
            required=True,
            limit=SHORT_TEXT_MAX,
        ),
        Field("amount", "amount", MONEY, "amount paid, card surcharge included, tip not", required=True),
        Field("tip", "tip", MONEY, "tip given with the payment (on top of amount)", default=ZERO),
        Field("surcharge", "surcharge", MONEY, "card surcharge inside amount", default=ZERO),
        Field("paid_at", "paid_at", INSTANT, "when the payment was made"),
    ),
)

REFUND = Entity(
    "refund",
    "taptouch.order_refunds",
    key="id",
    fields=(
        _order_id(),
        Field("refund_id", "id", ID, "the refund's id within the order", required=True),
        Field("amount", "amount", MONEY, "amount refunded", required=True),
        Field("reason", "reason", TEXT, "the reason given for the refund"),
        Field("refunded_at", "refunded_at", INSTANT, "when the refund was made"),
    ),
)

ORDER = Entity(
    "order",
    "taptouch.orders",
    key="id",
    fields=(
        Field("order_id", "id", ID, "Taptouch order id (global across accounts)", required=True),
        Field("store_id", "store_id", ID, "the store of the order (taptouch.stores.store_id)", required=True),
        Field("number", "number", TEXT, "the order number shown to staff and customers", limit=SHORT_TEXT_MAX),
        Field(
            "source",
            "source",
            TEXT,
            "where the order came from: pos | kiosk | online | ubereats | doordash",
            limit=SHORT_TEXT_MAX,
        ),
        Field(
            "fulfillment_type", "fulfillment_type", TEXT, "dine_in | takeaway | delivery | pickup", limit=SHORT_TEXT_MAX
        ),
        Field(
            "status",
            "status",
            TEXT,
            "open | completed | partially_refunded | refunded | voided",
            required=True,
            limit=SHORT_TEXT_MAX,
        ),
        Field("created_at", "created_at", INSTANT, "when the order was created", required=True),
        Field(
            "updated_at",
            "updated_at",
            INSTANT,
            "when Taptouch last changed the order (orders are windowed by it)",
            required=True,
        ),
        Field("completed_at", "completed_at", INSTANT, "when the order was completed (null while open)"),
        Field(
            "business_date",
            None,
            DERIVED,
            "the store's business date of created_at: local date of (wall-clock time minus the store's day start)",
        ),
        Field(
            "currency",
            "currency",
            TEXT,
            "ISO 4217 code the API sent with the order (null if unsent)",
            limit=CURRENCY_MAX,
        ),
        Field("subtotal", "subtotal", MONEY, "Σ item totals, GST-inclusive, before the order discount", required=True),
        Field("discount", "discount", MONEY, "order-level discount", required=True),
        Field("surcharge", "surcharge", MONEY, "order-level surcharge", required=True),
        Field("rounding", "rounding", MONEY, "cash rounding", required=True),
        Field("tax", "tax", MONEY, "GST included in total", required=True),
        Field(
            "total", "total", MONEY, "what the customer paid: subtotal − discount + surcharge + rounding", required=True
        ),
        Field("tips", "tips", MONEY, "tips on the order (on top of total)", default=ZERO),
        Field("redeem_points", "redeem_points", QUANTITY, "loyalty points redeemed"),
        Field("customer_id", "customer.id", ID, "the customer's Taptouch id (null for walk-ins)"),
        Field("customer_name", "customer.name", TEXT, "the customer's name"),
        Field("cashier_id", "cashier.id", ID, "the cashier's Taptouch id"),
        Field("cashier_name", "cashier.name", TEXT, "the cashier's name"),
    ),
    lines=(("items", ITEM), ("payments", PAYMENT), ("refunds", REFUND)),
    # the customer's e-mail is personal data the warehouse does not copy into a column
    kept_in_raw=frozenset({"customer.email"}),
)

STORE = Entity(
    "store",
    "taptouch.stores",
    key="id",
    fields=(
        Field("store_id", "id", ID, "Taptouch store id (global across accounts)", required=True),
        Field("name", "name", TEXT, "the store's name", required=True),
        Field("business_name", "business_name", TEXT, "the merchant's business name"),
        Field("status", "status", TEXT, "the store's status as the API sends it", required=True),
        Field(
            "timezone",
            "timezone",
            TEXT,
            "IANA time zone of the store; business dates are local dates in it",
            required=True,
            limit=SHORT_TEXT_MAX,
        ),
        Field(
            "currency",
            "currency",
            TEXT,
            "ISO 4217 code of the store's money (every amount of its orders and inventory)",
            required=True,
        ),
        Field("phone", "phone", TEXT, "the store's phone number"),
        Field("email", "email", TEXT, "the store's email address"),
        Field("address", "address", OBJECT, "the store's address as the API sends it (JSON)"),
        Field("created_at", "created_at", INSTANT, "when the store was created in Taptouch"),
        Field(
            "updated_at",
            "updated_at",
            INSTANT,
            "when Taptouch last changed the store (the version loaded)",
            required=True,
        ),
    ),
)

INVENTORY = Entity(
    "inventory",
    "taptouch.inventory_levels",
    key="product_id",
    seen_column="synced_at",
    fields=(
        Field("store_id", None, DERIVED, "the store"),
        Field("product_id", "product_id", ID, "the product", required=True),
        Field("sku", "sku", TEXT, "the product's SKU"),
        Field("name", "name", TEXT, "the product's name"),
        Field("category", "category", TEXT, "the product's category"),
        Field("unit", "unit", TEXT, "the unit stock is counted in"),
        Field(
            "on_hand",
            "on_hand",
            QUANTITY,
            "units in stock (negative when sales outran recorded receipts)",
            required=True,
        ),
        Field("reorder_level", "reorder_level", QUANTITY, "the level at which to reorder (null if unset)"),
        Field("cost_price", "cost_price", MONEY, "unit cost"),
        Field("sell_price", "sell_price", MONEY, "unit sell price"),
        Field("updated_at", "updated_at", INSTANT, "when Taptouch last changed the level"),
    ),
)

ENTITIES: dict[str, Entity] = {e.name: e for e in (STORE, ORDER, INVENTORY)}
"""The records the API lists, by the name used in taptouch.quarantine.entity."""


def tables(entity: Entity) -> list[Entity]:
    """The entity and the entities of its child tables (an order's items, payments, refunds)."""
    return [entity, *(child for _, child in entity.lines)]


def column_comments(entity: Entity) -> dict[str, str]:
    """{column: comment} of the entity's declared columns (the catalog adds raw, loaded_at, ...)."""
    return {f.column: f.comment for f in entity.fields if f.column is not None}
