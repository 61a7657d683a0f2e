"""Analytics views as assets (group ``analytics``), downstream of the loads, one per SQL file.

Each ``sql/analytics/<name>.sql`` becomes the asset ``<name>`` that creates or replaces the view
``analytics.<name>``. Its upstream assets are named in the file's header line ``-- depends: a, b``
(default: orders and stores; other views too, e.g. `sales_orders`), so the lineage graph shows
raw -> sales_orders -> the views analysts query.
"""


import base64
import io

import dagster as dg

from ..warehouse.resource import PostgresResource
from ..warehouse.views import analytics_dir, apply_views, view_depends, view_names, view_sql

GROUP = "analytics"


def _deps(name: str) -> list[str]:
    return view_depends(name) or ["orders", "stores"]


def _description(name: str) -> str:
    first = view_sql(name).splitlines()[0].lstrip("- ").strip()
    return first or f"analytics.{name}"


def sales_chart_markdown(conn, days: int = 28) -> str | None:
    """A PNG line chart of net sales per store per business date, as markdown (inline data URI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with conn.cursor() as cur:
        cur.execute(
            "select store_id, coalesce(store_name, store_id::text), business_date, net_sales"
            " from analytics.daily_store_sales"
            " where business_date > (select max(business_date) from analytics.daily_store_sales) - %s"
            " order by store_id, business_date",
            (days,),
        )
        rows = cur.fetchall()
    if not rows:
        return None
    series: dict[str, tuple[list, list]] = {}
    for store_id, name, day, net in rows:
        xs, ys = series.setdefault(f"{store_id} {name}", ([], []))
        xs.append(day)
        ys.append(float(net))  # plotting only: the figures themselves stay exact in the view
    fig, ax = plt.subplots(figsize=(9, 4), dpi=90)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_title("Net sales per store per business date (AUD)")
    ax.set_ylabel("net sales")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return f"![net sales per store per day](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def _make_view_asset(name: str) -> dg.AssetsDefinition:
    @dg.asset(name=name, group_name=GROUP, kinds={"postgres", "sql"}, deps=_deps(name),
              description=_description(name))
    def _view(context: dg.AssetExecutionContext, warehouse: PostgresResource) -> dg.MaterializeResult:
        warehouse.ensure_migrated()
        with warehouse.connect() as conn:
            conn.autocommit = True
            apply_views(conn, [name])
            with conn.cursor() as cur:
                cur.execute(f'select count(*) from analytics."{name}"')
                rows = cur.fetchone()[0]
            metadata = {"dagster/row_count": rows, "view": f"analytics.{name}",
                        "sql": dg.MetadataValue.path(str(analytics_dir() / f"{name}.sql"))}
            if name == "daily_store_sales":
                chart = sales_chart_markdown(conn)
                if chart:
                    metadata["net_sales_chart"] = dg.MetadataValue.md(chart)
        context.log.info(f"analytics.{name}: {rows} rows")
        return dg.MaterializeResult(metadata=metadata)

    return _view


analytics_assets = [_make_view_asset(name) for name in view_names()]
