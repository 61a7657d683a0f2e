"""Order windows loaded in tests as the ``orders`` asset loads them (:func:`pipelines.sync.sync_orders_window`),
with the stores and their time zones read from the warehouse's ``taptouch.stores`` (filled by the
test's own ``sync_stores``) where the asset reads the API's store listing."""

from __future__ import annotations

from datetime import datetime, timedelta

from pipelines.settings import RunSettings
from pipelines.sync import FULL_REFRESH, Incremental, OrdersRun, OrderWindow, SyncMode, SyncResult, sync_orders_window
from pipelines.warehouse.loader import store_timezones


def warehouse_run(
    conn,
    mode: SyncMode = FULL_REFRESH,
    *,
    store_ids: list[int] | None = None,
    timezones: dict[int, str] | None = None,
    **run_settings,
) -> OrdersRun:
    """An :class:`OrdersRun` over the stores of ``taptouch.stores`` (or of ``timezones``);
    ``run_settings``: fields of :class:`RunSettings` (``store_workers``, ``batch_size``)."""
    zones = store_timezones(conn) if timezones is None else timezones
    return OrdersRun(timezones=zones, mode=mode, settings=RunSettings(**run_settings), store_ids=store_ids)


def load_window(
    client,
    conn,
    key: str,
    start: datetime,
    end: datetime,
    *,
    lookback: timedelta | None = None,
    cancel=None,
    before_merge=None,
    **run,
) -> SyncResult:
    """Window ``key`` = [start, end): incremental with ``lookback`` when given, else in full."""
    mode = FULL_REFRESH if lookback is None else Incremental(lookback)
    return sync_orders_window(
        client,
        conn,
        OrderWindow(key, start, end),
        warehouse_run(conn, mode, **run),
        cancel=cancel,
        before_merge=before_merge,
    )
