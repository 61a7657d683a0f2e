"""The load a kill test SIGKILLs: ``python -m tests.support.reliability.kill_child BASE_URL DATABASE_URL START END``.

Syncs stores, then every UTC day of ``[START, END)`` as one order window each, through the
production code (``pipelines.sync``), with small pages and COPY batches so a kill can land in any
phase: fetching, staging, merging, committing. Prints ``ready`` once imports are done.
"""

from __future__ import annotations

import sys
from datetime import date, timedelta

from pipelines.sync import day_window, sync_stores
from pipelines.warehouse.db import connect
from taptouch_resource import TaptouchClient
from tests.support.windows import load_window


def main(argv: list[str]) -> int:
    base_url, db_url, first, last = argv
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        base_url=base_url,
        page_size=20,
        requests_per_second=None,
    )
    with connect(db_url, autocommit=True) as conn:
        print("ready", flush=True)
        sync_stores(client, conn)
        day = date.fromisoformat(first)
        while day < date.fromisoformat(last):
            start, end = day_window(day)
            load_window(client, conn, day.isoformat(), start, end, batch_size=15, store_workers=3)
            day += timedelta(days=1)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
