"""Analytics views as assets (group ``analytics``), one per SQL file, and their only writers.

Each ``sql/analytics/<name>.sql`` becomes the asset ``<name>`` that creates or replaces the view
``analytics.<name>``. Its upstream assets are what its SQL reads: the asset that writes each
``taptouch.*`` table it names (:data:`TABLE_WRITERS`) and the analytics views it builds on, so the
lineage graph shows raw -> sales_orders -> the views analysts query. Each materialization records
the row count, the column types, the SQL file (relative to the repository) and a preview of the
first rows as a table (pandas through the warehouse's SQLAlchemy engine); ``daily_store_sales``
adds its complete and partial store-days and a chart of net sales over complete days.
"""

import base64
import hashlib
import io
from collections.abc import Sequence

import dagster as dg

from ..accounts import DEFAULT, Account
from ..warehouse.resource import PostgresResource
from ..warehouse.schema import VIEW_AUTOMATION, view_materialization_metadata, view_metadata, view_sql_path
from ..warehouse.views import apply_views, view_description, view_names, view_reads, view_sql
from .preview import PREVIEW_ROWS, read_frame, table_preview

GROUP = "analytics"

# The one asset that writes each table of schema taptouch.
TABLE_WRITERS = {
    "stores": "stores",
    "orders": "orders",
    "order_items": "orders",
    "order_payments": "orders",
    "order_refunds": "orders",
    **dict.fromkeys(("sales_days", "sales_hours", "sales_channels", "sales_payments", "sales_products"), "orders"),
    "inventory_levels": "inventory",
    "inventory_snapshots": "inventory",
    "sync_log": "orders",  # the orders windows' loads
    "order_history": "orders",  # every version of an order a load saw (order_changes, daily_restatements)
    "listing_proofs": "orders",  # the complete listings (and the reconciliation's)
    "business_day_coverage": "orders",  # what analytics.load_coverage reads: kept from listing_proofs by triggers
    "deletion_log": "orders",  # as orders.deleted_at: confirmed by order_deletions, cleared by any listing
}


def view_deps(name: str, accounts: Sequence[Account] = (DEFAULT,)) -> list[str]:
    """The assets ``analytics.<name>`` reads: the writers of its tables (every account's: one
    warehouse holds them all), and the views it builds on."""
    reads = view_reads(name)
    unowned = reads["taptouch"] - TABLE_WRITERS.keys()
    if unowned:
        raise ValueError(
            f"sql/analytics/{name}.sql reads {', '.join(sorted(unowned))}, which no asset writes "
            f"(pipelines/assets/analytics.py TABLE_WRITERS)"
        )
    writers = {a.key_string(TABLE_WRITERS[t]) for t in reads["taptouch"] for a in accounts}
    return sorted(writers | reads["analytics"])


CHART_DAYS = 28


def sales_chart_series(warehouse: PostgresResource, days: int = CHART_DAYS):
    """Net sales per business date (rows) and series (columns), over the last ``days`` complete
    business dates: partial days (``day_complete`` false: the current day, a first day not fully
    loaded) are left out, so no line starts or ends near 0. A series is one store of one account,
    labelled ``<store_id> <name> (<account>, <currency>)``: two accounts' stores never share a line."""
    frame = read_frame(
        warehouse,
        "select store_id, coalesce(store_name, store_id::text) as store_name, account, currency, business_date,"
        " net_sales from analytics.daily_store_sales where day_complete and business_date >"
        " (select max(business_date) from analytics.daily_store_sales where day_complete) - cast(:days as integer)",
        days=days,
    )
    if frame.empty:
        return None
    frame["series"] = (
        frame["store_id"].astype(str)
        + " "
        + frame["store_name"]
        + " ("
        + frame["account"]
        + ", "
        + frame["currency"].fillna("?")
        + ")"
    )
    frame["net_sales"] = frame["net_sales"].astype(float)  # plotting only: the view's figures stay exact
    return frame.pivot_table(index="business_date", columns="series", values="net_sales", aggfunc="sum")


def sales_chart(warehouse: PostgresResource, days: int = CHART_DAYS) -> str | None:
    """A PNG line chart of :func:`sales_chart_series` as markdown (an inline data URI), the legend
    beside the plot; None when no business date is complete yet."""
    series = sales_chart_series(warehouse, days)
    if series is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=90)
    series.plot(ax=ax, marker="o", markersize=3)
    ax.set_title(f"Net sales per store, last {days} complete business dates")
    ax.set_xlabel("business date")
    ax.set_ylabel("net sales (the store's currency)")
    ax.grid(alpha=0.3)
    ax.legend(title="store (account, currency)", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![net sales per store per day](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _materialization_metadata(warehouse: PostgresResource, name: str) -> dict:
    """Row count, column schema, the SQL file and a typed table preview of ``analytics.<name>``;
    ``daily_store_sales`` adds its complete and partial days and the net sales chart."""
    rows = int(read_frame(warehouse, f'select count(*) as n from analytics."{name}"')["n"].iloc[0])
    described = view_materialization_metadata(warehouse, name)
    types = {c.name: c.type for c in described["dagster/column_schema"].columns}
    preview = read_frame(warehouse, f'select * from analytics."{name}" limit {PREVIEW_ROWS}')
    metadata = {
        **described,
        "dagster/row_count": rows,
        "view": f"analytics.{name}",
        "sql": dg.MetadataValue.path(view_sql_path(name)),
        "preview": table_preview(preview, types),
    }
    if name == "daily_store_sales":
        days = read_frame(
            warehouse,
            "select count(*) filter (where day_complete) as complete,"
            " count(*) filter (where not day_complete) as partial from analytics.daily_store_sales",
        )
        metadata["complete_store_days"] = int(days["complete"].iloc[0])
        metadata["partial_store_days"] = int(days["partial"].iloc[0])
        chart = sales_chart(warehouse)
        if chart:
            metadata["net_sales_chart"] = dg.MetadataValue.md(chart)
    return metadata


def _make_view_asset(name: str, accounts: Sequence[Account] = (DEFAULT,)) -> dg.AssetsDefinition:
    deps = [dg.AssetKey.from_user_string(d) for d in view_deps(name, accounts)]

    @dg.asset(
        name=name,
        group_name=GROUP,
        kinds={"postgres", "sql"},
        deps=deps,
        description=view_description(name),
        code_version=hashlib.sha256(view_sql(name).encode()).hexdigest()[:12],
        metadata=view_metadata(name),
        automation_condition=VIEW_AUTOMATION,
    )
    def _view(context: dg.AssetExecutionContext, warehouse: PostgresResource) -> dg.MaterializeResult:
        warehouse.ensure_migrated()
        with warehouse.connect() as conn:
            conn.autocommit = True
            apply_views(conn, [name])
        metadata = _materialization_metadata(warehouse, name)
        context.log.info(f"analytics.{name}: {metadata['dagster/row_count']} rows")
        return dg.MaterializeResult(metadata=metadata)

    return _view


def make_analytics_assets(accounts: Sequence[Account] = (DEFAULT,)) -> list[dg.AssetsDefinition]:
    """One asset per view of ``sql/analytics/``, shared by every account (the views carry ``account``)."""
    return [_make_view_asset(name, accounts) for name in view_names()]


analytics_assets = make_analytics_assets()
