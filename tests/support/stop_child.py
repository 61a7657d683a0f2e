"""A Dagster run that a stop test terminates: ``python -m tests.support.stop_child MODE BASE_URL DATABASE_URL``.

The process is a run worker as Dagster's own entry points make one: SIGTERM is handled as SIGINT
(``setup_interrupt_handlers``, "for k8s"), interrupts are captured outside the step and raised
inside it (``capture_interrupts``; Dagster raises ``DagsterExecutionInterruptedError`` in the step's
main thread), and the run is a real ``materialize`` against the sandbox at BASE_URL and the
warehouse at DATABASE_URL, with the shared request budget (``TAPTOUCH_REQUESTS_PER_SECOND`` 10).

MODE ``orders``: the project's own ``stores`` and then ``orders`` assets (one day), the orders run
with the multiprocess executor of a deployment (the step in its own process, interrupted by the run
worker; the in-process executor would instead wait out the asset's RetryPolicy delay after an
interrupt, Dagster's own behaviour). MODE ``threads``: a
small asset with the fetch-thread pattern of ``pipelines/sync.py`` and the stop wiring this item
asks of it (each fetch thread inside ``stop_on(stop)``; the main thread sets ``stop`` as it unwinds),
so the mechanism is proven on a real run whatever sync.py does. Prints ``ready`` before the run.
"""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from dagster._utils.interrupts import capture_interrupts, setup_interrupt_handlers

from pipelines.warehouse.budget import SharedBudget
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource
from taptouch_resource.retry import stop_on

CLIENT_ID, SECRET = "sandbox-client", "sandbox-secret"
DAY = "2026-11-26"


def _threads_asset(base_url: str, db_url: str) -> dg.AssetsDefinition:
    @dg.asset(name="fetch_threads")
    def fetch_threads(context) -> None:
        budget = SharedBudget.for_client(db_url, CLIENT_ID, 10)
        taptouch = TaptouchResource(
            client_id=CLIENT_ID, client_secret=SECRET, base_url=base_url, requests_per_second=10
        )
        client = taptouch.get_client(limiter=budget)
        stores = [s["id"] for s in client.list_stores()]
        stop = threading.Event()

        def fetch(store_id: int) -> int:
            with stop_on(stop):  # the wiring: every wait of this thread ends when the run stops
                return sum(1 for _ in client.iter_inventory_records(store_id))

        pool = ThreadPoolExecutor(max_workers=len(stores))
        try:
            futures = [pool.submit(fetch, s) for s in stores]
            context.log.info(f"fetched {sum(f.result() for f in futures)} records")
        finally:
            stop.set()  # the run is ending (or done): waiting threads stop now
            pool.shutdown(wait=True)

    return fetch_threads


def _resources() -> dict:
    return {
        "taptouch": TaptouchResource(
            client_id=CLIENT_ID,
            client_secret=SECRET,
            base_url=os.environ["STOP_CHILD_BASE_URL"],
            requests_per_second=10,
        ),
        "warehouse": PostgresResource(database_url=os.environ["STOP_CHILD_DATABASE_URL"]),
    }


def orders_job() -> dg.JobDefinition:
    """The project's ``orders`` asset as a job (reconstructable: the step process builds it again)."""
    from pipelines.assets.taptouch import taptouch_assets

    stores, orders, _ = taptouch_assets()
    defs = dg.Definitions(
        assets=[stores, orders], resources=_resources(), jobs=[dg.define_asset_job("orders_job", selection=[orders])]
    )
    return defs.resolve_job_def("orders_job")


def main(argv: list[str]) -> int:
    mode, base_url, db_url = argv
    os.environ["STOP_CHILD_BASE_URL"], os.environ["STOP_CHILD_DATABASE_URL"] = base_url, db_url
    setup_interrupt_handlers()
    with capture_interrupts():
        if mode == "orders":
            from pipelines.assets.taptouch import taptouch_assets

            stores = taptouch_assets()[0]
            assert dg.materialize([stores], resources=_resources()).success
            with dg.instance_for_test() as instance:
                print("ready", flush=True)
                result = dg.execute_job(
                    dg.reconstructable(orders_job),
                    instance=instance,
                    tags={"dagster/partition": DAY},
                    raise_on_error=False,
                )
        else:
            print("ready", flush=True)
            result = dg.materialize([_threads_asset(base_url, db_url)], raise_on_error=False)
    print("done" if result.success else "failed", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
