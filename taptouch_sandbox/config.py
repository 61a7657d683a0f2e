"""Configuration of the sandbox: what data it holds (SandboxConfig) and how it misbehaves (Faults)."""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import date

ALL_SCOPES = ("integration.store", "integration.order", "integration.inventory")
MAX_ORDERS_PER_DAY = 60_000  # a store-day holds at most 99,999 orders (see data.py's ids)


@dataclass(frozen=True)
class SandboxConfig:
    """The data set. Everything is a pure function of these fields (and of ``end_date``)."""

    seed: int = 1
    stores: int = 3
    days: int = 30
    end_date: date | None = None  # None: today in UTC, resolved once when the Sandbox is built
    orders_per_day: int = 60  # mean per store per day; weekends a little busier; at most MAX_ORDERS_PER_DAY
    client_id: str = "sandbox-client"
    client_secret: str = field(default="sandbox-secret", repr=False)
    granted_scopes: tuple[str, ...] = ALL_SCOPES
    store_id_base: int = 7101
    empty_store_ids: tuple[int, ...] = ()  # stores that exist but have no orders and no inventory
    inactive_store_ids: tuple[int, ...] = ()  # stores listed with status "inactive"
    # Order ids of id_space 0 are today's; another client served by the same server (SandboxGroup)
    # takes another space so that its order ids, like its store ids, are its own (ids are global).
    id_space: int = 0
    # How it serves, never what: with page_cache_mb > 0 each orders page is generated once and then
    # served from memory (up to that many MB, least recently used first out) while the data does not
    # change and no fault shapes pages: Sandbox.page_cache (docs/sandbox.md, "Page cache").
    page_cache_mb: int = 0

    def __post_init__(self) -> None:
        if self.stores < 0 or self.stores > 899:
            raise ValueError("stores must be between 0 and 899")
        if self.days < 1:
            raise ValueError("days must be at least 1")
        if not 0 <= self.orders_per_day <= MAX_ORDERS_PER_DAY:
            raise ValueError(f"orders_per_day must be between 0 and {MAX_ORDERS_PER_DAY}")
        if self.page_cache_mb < 0:
            raise ValueError("page_cache_mb must be 0 (no cache) or a positive number of megabytes")
        if not 0 <= self.id_space <= 99:
            raise ValueError("id_space must be between 0 and 99")
        unknown = set(self.granted_scopes) - set(ALL_SCOPES)
        if unknown:
            raise ValueError(f"granted_scopes has unknown scopes {sorted(unknown)}; known: {ALL_SCOPES}")


@dataclass
class Faults:
    """Fault injection; every knob is off by default and may be changed between requests.

    "Every N" knobs count API requests (token requests for ``token_errors_every``) from the
    moment the knob last changed value, so setting ``rate_limit_every = 3`` makes the third
    request after it a 429.
    """

    rate_limit_every: int = 0  # every Nth API request starts a burst of 429s
    rate_limit_burst: int = 1
    retry_after: str = "1"  # Retry-After of a 429: "0", seconds, or "date" (an HTTP-date 1-2 s ahead)
    server_error_every: int = 0  # every Nth API request starts a burst of 500/502/503 HTML pages
    server_error_burst: int = 1
    latency: float = 0.0  # seconds added to every request (real HTTP only)
    timeout_every: int = 0  # every Nth API request stalls: sleeps timeout_sleep (HTTP) / ReadTimeout (mock)
    timeout_sleep: float = 5.0
    token_lifetime: int = 172800  # expires_in of new tokens, seconds
    revoke_tokens_every: int = 0  # after every N API requests all tokens are revoked
    token_errors_every: int = 0  # every Nth token request: 503 HTML or 429, alternately
    duplicate_page_boundary: bool = False  # page k>=1 starts with the last record of page k-1
    ignore_index: bool = False  # the server ignores ?index= and always serves page 0
    malformed_every: int = 0  # ~1 in N orders (chosen by id) are served broken, see malformed_order_ids()
    extra_fields: bool = False  # unknown fields (some nested) on every store, order, item and stock record
    forbidden_stores: set[int] = field(default_factory=set)  # 403 store_forbidden on orders/inventory
    ack_mismatch_every: int = 0  # every Nth API request: HTTP 200 carrying status.ack 500
    # Eventually consistent listings (issue 20). The two "every N" knobs below count the orders
    # requests that reach the data (not those a 429/5xx fault answered), each on its own.
    empty_orders_every: int = 0  # every Nth orders request: HTTP 200 with "data": [] (looks like the end)
    partial_orders_every: int = 0  # every Nth orders request: its page cut to half (short: looks like the end)
    unsorted_pages: bool = False  # records of every orders page in a shuffled order (the contract promises none)
    # orders listings sorted by id alone, not by (updated_at, id): each page looks in order until an
    # order edited after later ones were created ends it
    sorted_by_id: bool = False
    clock_skew: float = 0.0  # seconds added to the API's clock (status.timestamp) but not to record instants
    # The next N orders pages served full (more may follow) each get their first record edited right
    # after serving, as a merchant's edit while the listing runs: updated_at = max(clock, previous + 1 s).
    # Counts down to 0. Read by page number, the record at that page's boundary is then never served.
    edits_during_listing: int = 0

    def reset(self) -> None:
        """Switch every fault off again."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)


REQUEST_TIMES_KEPT = 100_000


@dataclass
class Stats:
    """Counters of what the sandbox served. Attribute or item access: ``stats.api_requests``."""

    api_requests: int = 0
    token_requests: int = 0
    orders_served: int = 0
    responses_by_status: dict[int, int] = field(default_factory=dict)
    # When each API request arrived (time.time(), Unix seconds; token requests not included), the
    # latest REQUEST_TIMES_KEPT: what rate-limit tests count per one-second window.
    api_request_times: deque = field(default_factory=lambda: deque(maxlen=REQUEST_TIMES_KEPT))
    # API requests per path (without the query): what incremental-load tests count per store.
    api_requests_by_path: Counter = field(default_factory=Counter)

    def __getitem__(self, name: str):
        return getattr(self, name)

    def reset(self) -> None:
        self.api_requests = self.token_requests = self.orders_served = 0
        self.responses_by_status = {}
        self.api_request_times.clear()
        self.api_requests_by_path.clear()
