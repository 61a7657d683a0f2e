"""Analytics views as assets (group ``analytics``), one per SQL file, and their only writers.

Each ``sql/analytics/<name>.sql`` becomes the asset ``<name>`` that creates or replaces the view
``analytics.<name>``. Its upstream assets are what its SQL reads: the asset that writes each
``taptouch.*`` table it names (:data:`TABLE_WRITERS`) and the analytics views it builds on, so the
lineage graph shows raw -> sales_orders -> the views analysts query. Each materialization records
the row count and a preview (pandas through the warehouse's SQLAlchemy engine);
``daily_store_sales`` adds a chart of net sales.
"""


import base64
import hashlib
import io

from typing import Sequence

import dagster as dg

from ..accounts import DEFAULT, Account
from ..warehouse.resource import PostgresResource
from ..warehouse.schema import VIEW_AUTOMATION, view_materialization_metadata, view_metadata
from ..warehouse.views import analytics_dir, apply_views, view_description, view_names, view_reads, view_sql
from .preview import markdown_preview, read_frame

GROUP = "analytics"

# The one asset that writes each table of schema taptouch.
TABLE_WRITERS = {
    "stores": "stores",
    "orders": "orders", "order_items": "orders", "order_payments": "orders", "order_refunds": "orders",
    "inventory_levels": "inventory", "inventory_snapshots": "inventory",
    "sync_log": "orders",  # what analytics.business_days reads: the orders windows' loads
}


def view_deps(name: str, accounts: Sequence[Account] = (DEFAULT,)) -> list[str]:
    """The assets ``analytics.<name>`` reads: the writers of its tables (every account's: one
    warehouse holds them all), and the views it builds on."""
    reads = view_reads(name)
    unowned = reads["taptouch"] - TABLE_WRITERS.keys()
    if unowned:
        raise ValueError(f"sql/analytics/{name}.sql reads {', '.join(sorted(unowned))}, which no asset writes "
                         f"(pipelines/assets/analytics.py TABLE_WRITERS)")
    writers = {a.key_string(TABLE_WRITERS[t]) for t in reads["taptouch"] for a in accounts}
    return sorted(writers | reads["analytics"])


def sales_chart(warehouse: PostgresResource, days: int = 28) -> str | None:
    """A PNG line chart of net sales per store over the last ``days`` business dates, as markdown
    (an inline data URI); None when the view is empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = read_frame(
        warehouse,
        "select store_id, coalesce(store_name, store_id::text) as store_name, business_date, net_sales"
        " from analytics.daily_store_sales"
        " where business_date > (select max(business_date) from analytics.daily_store_sales) - cast(:days as integer)",
        days=days,
    )
    if frame.empty:
        return None
    frame["store"] = frame["store_id"].astype(str) + " " + frame["store_name"]
    frame["net_sales"] = frame["net_sales"].astype(float)  # plotting only: the view's figures stay exact
    series = frame.pivot_table(index="business_date", columns="store", values="net_sales", aggfunc="sum")
    fig, ax = plt.subplots(figsize=(9, 4), dpi=90)
    series.plot(ax=ax, marker="o", markersize=3)
    ax.set_title("Net sales per store per business date")
    ax.set_xlabel("business date")
    ax.set_ylabel("net sales")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![net sales per store per day](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _make_view_asset(name: str, accounts: Sequence[Account] = (DEFAULT,)) -> dg.AssetsDefinition:
    deps = [dg.AssetKey.from_user_string(d) for d in view_deps(name, accounts)]

    @dg.asset(name=name, group_name=GROUP, kinds={"postgres", "sql"}, deps=deps,
              description=view_description(name),
              code_version=hashlib.sha256(view_sql(name).encode()).hexdigest()[:12],
              metadata=view_metadata(name), automation_condition=VIEW_AUTOMATION)
    def _view(context: dg.AssetExecutionContext, warehouse: PostgresResource) -> dg.MaterializeResult:
        warehouse.ensure_migrated()
        with warehouse.connect() as conn:
            conn.autocommit = True
            apply_views(conn, [name])
        rows = int(read_frame(warehouse, f'select count(*) as n from analytics."{name}"')["n"].iloc[0])
        preview = read_frame(warehouse, f'select * from analytics."{name}" limit 20')
        metadata = {**view_materialization_metadata(warehouse, name), "dagster/row_count": rows, "view": f"analytics.{name}",
                    "sql": dg.MetadataValue.path(str(analytics_dir() / f"{name}.sql")),
                    "preview": markdown_preview(preview)}
        if name == "daily_store_sales":
            chart = sales_chart(warehouse)
            if chart:
                metadata["net_sales_chart"] = dg.MetadataValue.md(chart)
        context.log.info(f"analytics.{name}: {rows} rows")
        return dg.MaterializeResult(metadata=metadata)

    return _view


def make_analytics_assets(accounts: Sequence[Account] = (DEFAULT,)) -> list[dg.AssetsDefinition]:
    """One asset per view of ``sql/analytics/``, shared by every account (the views carry ``account``)."""
    return [_make_view_asset(name, accounts) for name in view_names()]


analytics_assets = make_analytics_assets()
