"""``taptouch-sandbox serve ...``: run the fake Taptouch server until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from datetime import date

from .app import Sandbox, server_url
from .config import ALL_SCOPES, Faults, SandboxConfig

PAGE_CACHE_ENV = "TAPTOUCH_SANDBOX_PAGE_CACHE_MB"  # the default of --page-cache-mb

_FAULT_HELP = {
    "rate_limit_every": "every Nth API request starts a burst of 429s",
    "rate_limit_burst": "length of a 429 burst",
    "retry_after": "Retry-After of a 429: 0, seconds, or 'date'",
    "server_error_every": "every Nth API request starts a burst of 500/502/503 HTML pages",
    "server_error_burst": "length of a 5xx burst",
    "latency": "seconds added to every request",
    "timeout_every": "every Nth API request stalls for --timeout-sleep seconds",
    "timeout_sleep": "how long a stalled request sleeps",
    "token_lifetime": "expires_in of new tokens (seconds)",
    "revoke_tokens_every": "revoke every token after each N API requests",
    "token_errors_every": "every Nth token request fails (503 HTML or 429)",
    "duplicate_page_boundary": "page k>=1 repeats the last record of page k-1",
    "ignore_index": "ignore ?index= (always serve page 0)",
    "malformed_every": "serve ~1 in N orders malformed",
    "extra_fields": "add unknown fields to every record",
    "ack_mismatch_every": "every Nth API request: HTTP 200 with status.ack 500",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taptouch-sandbox", description="A fake Taptouch API server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the fake API over HTTP until Ctrl-C")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument("--seed", type=int, default=1)
    serve.add_argument("--stores", type=int, default=3)
    serve.add_argument("--days", type=int, default=30)
    serve.add_argument("--orders-per-day", type=int, default=60)
    serve.add_argument("--end-date", type=date.fromisoformat, default=None, help="YYYY-MM-DD; default today (UTC)")
    serve.add_argument("--client-id", default="sandbox-client")
    serve.add_argument("--client-secret", default="sandbox-secret")
    serve.add_argument("--scopes", default=" ".join(ALL_SCOPES), help="space-separated scopes the client may get")
    serve.add_argument("--empty-store", type=int, action="append", default=[], help="a store id with no data")
    serve.add_argument(
        "--page-cache-mb",
        type=int,
        default=_page_cache_default(parser),
        help=f"serve each orders page from memory once generated, up to this many MB (0: off; default "
        f"${PAGE_CACHE_ENV}, else 0); bypassed while a fault shapes pages, emptied when the data changes",
    )
    faults = serve.add_argument_group("faults")
    for f in dataclasses.fields(Faults):
        if f.name == "forbidden_stores":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            faults.add_argument(flag, action="store_true", help=_FAULT_HELP.get(f.name))
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            faults.add_argument(flag, type=kind, default=f.default, help=_FAULT_HELP.get(f.name))
    faults.add_argument(
        "--forbidden-store",
        type=int,
        action="append",
        default=[],
        help="403 store_forbidden for this store's orders and inventory (repeatable)",
    )
    return parser


def _page_cache_default(parser: argparse.ArgumentParser) -> int:
    raw = os.environ.get(PAGE_CACHE_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        parser.error(f"{PAGE_CACHE_ENV} must be a whole number of megabytes (0: no page cache), got {raw!r}")
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = SandboxConfig(
        seed=args.seed,
        stores=args.stores,
        days=args.days,
        end_date=args.end_date,
        orders_per_day=args.orders_per_day,
        client_id=args.client_id,
        client_secret=args.client_secret,
        granted_scopes=tuple(args.scopes.split()),
        empty_store_ids=tuple(args.empty_store),
        page_cache_mb=args.page_cache_mb,
    )
    faults = Faults(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Faults) if f.name != "forbidden_stores"},
        forbidden_stores=set(args.forbidden_store),
    )
    sandbox = Sandbox(config, faults=faults)
    server = sandbox.make_server(args.host, args.port)
    url = server_url(server)

    def stop(signum, frame):  # SIGTERM: leave like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(
        f"Taptouch sandbox serving {url}  (seed={config.seed}, stores={sandbox.store_ids()}, "
        f"days={config.days} ending {sandbox.end_date}, ~{config.orders_per_day} orders/store/day"
        + (f", page cache {config.page_cache_mb} MB" if config.page_cache_mb else "")
        + ")"
    )
    print(f"client_id={config.client_id} client_secret={config.client_secret}")
    print(
        f"export TAPTOUCH_BASE_URL={url} TAPTOUCH_CLIENT_ID={config.client_id} "
        f"TAPTOUCH_CLIENT_SECRET={config.client_secret}",
        flush=True,
    )
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("sandbox stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
