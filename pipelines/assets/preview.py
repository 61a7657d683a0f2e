"""Previews in asset metadata: pandas reads a query's first rows through the warehouse's
SQLAlchemy engine, and Dagster shows them as a table (``MetadataValue.table``, typed by a
``TableSchema``) on the asset's page, not behind a markdown toggle.

pandas and SQLAlchemy are imported when a preview is first read, not with the code location: the
definitions do not need them, and every process that loads the definitions (a run, each of its
steps, the code server) would pay for them (docs/performance.md, "Start-up")."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import dagster as dg

from ..warehouse.resource import PostgresResource

if TYPE_CHECKING:
    import pandas as pd

PREVIEW_ROWS = 20


def read_frame(warehouse: PostgresResource, query: str, **params) -> pd.DataFrame:
    """The rows of ``query`` (bound ``:name`` parameters) as a DataFrame; money stays Decimal
    (pandas would make numeric columns float by default)."""
    import pandas as pd
    import sqlalchemy

    with warehouse.get_engine().connect() as conn:
        return pd.read_sql_query(sqlalchemy.text(query), conn, params=params, coerce_float=False)


def _cell(value: Any) -> str | int | float | bool | None:
    """A value a ``TableRecord`` holds: money stays exact (Decimal as its text, e.g. ``12.30``),
    dates and instants in ISO 8601, arrays as JSON, missing values as None."""
    import pandas as pd  # loaded already: the value comes from a frame

    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, bool) or hasattr(value, "dtype") and str(value.dtype) == "bool":
        return bool(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.date, dt.datetime, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, int) or hasattr(value, "dtype") and str(value.dtype).startswith(("int", "uint")):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return json.dumps(value.tolist() if hasattr(value, "tolist") else list(value), default=str)
    return str(value)


def table_preview(frame: pd.DataFrame, types: Mapping[str, str] | None = None) -> dg.TableMetadataValue:
    """The first :data:`PREVIEW_ROWS` rows of ``frame`` as a Dagster table; ``types`` (column ->
    SQL type, e.g. from ``information_schema``) names the columns' types, else "string"."""
    types = types or {}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=str(c), type=types.get(str(c), "string")) for c in frame.columns]
    )
    records = [
        dg.TableRecord({str(c): _cell(v) for c, v in row.items()})
        for row in frame.head(PREVIEW_ROWS).to_dict("records")
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def markdown_preview(frame: pd.DataFrame) -> dg.MetadataValue:
    """The first rows as a markdown table (what the UI folds behind "[Show Markdown]": prefer
    :func:`table_preview`)."""
    if frame.empty:
        return dg.MetadataValue.md("(no rows)")
    return dg.MetadataValue.md(frame.head(PREVIEW_ROWS).to_markdown(index=False))
