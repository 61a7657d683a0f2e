"""Throughput of the sandbox: ``python -m taptouch_sandbox.bench [--stores 2 --days 30 ...]``.

Pages through every order of every store with a plain httpx client (count=500) and parses each
page as a client must (``parse_float=Decimal``); prints orders/s in-process and over loopback HTTP.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from decimal import Decimal

import httpx

from .app import Sandbox
from .config import SandboxConfig


def drain(client: httpx.Client, sb: Sandbox, count: int) -> int:
    token = client.post(
        "/auth/v2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sb.config.client_id,
            "client_secret": sb.config.client_secret,
        },
    ).json()["access_token"]
    headers = {"Authorization": f"bearer {token}"}
    total = 0
    for store_id in sb.store_ids():
        index = 0
        while True:
            r = client.get(
                f"/integration/v1/stores/{store_id}/orders", headers=headers, params={"index": index, "count": count}
            )
            r.raise_for_status()
            page = json.loads(r.content, parse_float=Decimal)["data"]
            total += len(page)
            if len(page) < count:
                break
            index += 1
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stores", type=int, default=2)
    p.add_argument("--days", type=int, default=20)
    p.add_argument("--orders-per-day", type=int, default=1000)
    p.add_argument("--count", type=int, default=500)
    args = p.parse_args(argv)
    config = SandboxConfig(
        seed=1, stores=args.stores, days=args.days, orders_per_day=args.orders_per_day, end_date=date(2026, 11, 27)
    )
    for label in ("in-process", "HTTP"):
        sb = Sandbox(config)  # fresh: no warm caches from the previous run
        t0 = time.perf_counter()
        if label == "in-process":
            with httpx.Client(base_url="http://sandbox", transport=sb.transport()) as client:
                n = drain(client, sb, args.count)
        else:
            with sb.serve() as url, httpx.Client(base_url=url, timeout=60) as client:
                n = drain(client, sb, args.count)
        dt = time.perf_counter() - t0
        print(f"{label:>10}: {n} orders in {dt:.2f} s = {n / dt:,.0f} orders/s (page size {args.count})")


if __name__ == "__main__":
    main()
