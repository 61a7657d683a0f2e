"""Previews in asset metadata: pandas reads a query's first rows through the warehouse's
SQLAlchemy engine and renders them as a markdown table."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import sqlalchemy

from ..warehouse.resource import PostgresResource

PREVIEW_ROWS = 20


def read_frame(warehouse: PostgresResource, query: str, **params) -> pd.DataFrame:
    """The rows of ``query`` (bound ``:name`` parameters) as a DataFrame; money stays Decimal."""
    with warehouse.get_engine().connect() as conn:
        return pd.read_sql_query(sqlalchemy.text(query), conn, params=params)


def markdown_preview(frame: pd.DataFrame) -> dg.MetadataValue:
    if frame.empty:
        return dg.MetadataValue.md("(no rows)")
    return dg.MetadataValue.md(frame.head(PREVIEW_ROWS).to_markdown(index=False))
