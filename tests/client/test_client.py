"""Unit tests of the client, token manager and parsing, against httpx.MockTransport (no sockets)."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from urllib.parse import parse_qs

import httpx
import pytest

from taptouch_resource import (
    ClientCredentialsAuth,
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchClient,
    TaptouchConfigError,
    TaptouchProtocolError,
    TaptouchRateLimitError,
    TaptouchResource,
    jsonutil,
)
from taptouch_resource.client import ClientOptions
from taptouch_resource.retry import MAX_RATE_LIMITED_RETRIES, MIN_RETRY_AFTER, parse_retry_after

SECRET = "s3cr3t-value-never-shown"
BASE = "https://api.taptouch.test"
T0 = datetime(2026, 11, 2, tzinfo=UTC)
T1 = T0 + timedelta(days=1)


def envelope(data, ack=200, errors=None):
    return {"status": {"timestamp": 1764300000, "ack": ack, "errors": errors}, "data": data}


class FakeAPI:
    """A scriptable Taptouch: a token endpoint and one paginated list, with queued faults."""

    def __init__(self, records=None, *, lifetime=172800, scope=None):
        self.records = records if records is not None else [{"id": i, "v": Decimal("0.10")} for i in range(250)]
        self.lifetime = lifetime
        self.scope = scope
        self.token_calls = 0
        self.api_calls = 0
        self.valid_tokens: set[str] = set()
        self.faults: list[httpx.Response] = []  # served (one each) before normal API answers
        self.token_faults: list[httpx.Response] = []
        self.ignore_index = False
        self.seen_auth: list[str] = []
        self.lock = threading.Lock()
        self.token_delay = 0.0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/v2/token":
            with self.lock:
                self.token_calls += 1
                fault = self.token_faults.pop(0) if self.token_faults else None
                n = self.token_calls
            if self.token_delay:
                time.sleep(self.token_delay)
            if fault is not None:
                return fault
            form = parse_qs(request.content.decode())
            if form.get("client_secret") != [SECRET]:
                return httpx.Response(401, json={"error": "invalid_client", "error_description": "bad secret"})
            token = f"tok-{n}"
            with self.lock:
                self.valid_tokens.add(token)
            body = {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}
            body["scope"] = self.scope if self.scope is not None else form["scope"][0]
            return httpx.Response(200, json=body)
        with self.lock:
            self.api_calls += 1
            fault = self.faults.pop(0) if self.faults else None
        auth = request.headers.get("Authorization", "")
        self.seen_auth.append(auth)
        if fault is not None:
            return fault
        if auth.split(" ", 1)[-1] not in self.valid_tokens:
            return httpx.Response(401, json=envelope(None, 401, {"code": "invalid_token", "message": "expired"}))
        q = request.url.params
        count, index = int(q.get("count", 100)), int(q.get("index", 0))
        if self.ignore_index:
            index = 0
        page = self.records[index * count : (index + 1) * count]
        return httpx.Response(200, content=jsonutil.dumps(envelope(page)).encode())


def make_client(fake, **kw):
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("requests_per_second", None)
    return TaptouchClient(
        client_id="cid", client_secret=SECRET, base_url=BASE, transport=httpx.MockTransport(fake), **kw
    )


def test_pagination_and_decimal_exactness():
    fake = FakeAPI(records=[{"id": i, "amount": Decimal("0.10")} for i in range(10_000)])
    client = make_client(fake, page_size=500)
    records = list(client.list_stores())
    assert [r["id"] for r in records] == list(range(10_000))
    total = sum(r["amount"] for r in records)  # summed as floats, 10,000 x 0.1 is not 1000.0
    assert total == Decimal("1000.00") and isinstance(records[0]["amount"], Decimal)
    # 10,000 records / 500 = 20 full pages, then an empty one ends it
    assert client.stats.pages == 21 and fake.token_calls == 1


def test_tunables_come_in_options_or_as_keywords_which_override_them():
    options = ClientOptions(page_size=3, max_pages=7)
    fake = FakeAPI(records=[{"id": i} for i in range(5)])
    client = make_client(fake, options=options)
    assert [r["id"] for r in client.list_stores()] == [0, 1, 2, 3, 4]
    assert client.stats.pages == 2 and client.page_size == 3  # 3 + 2 records: the short page ends it
    overridden = make_client(fake, options=options, page_size=5, max_retries=1)
    assert (overridden.page_size, overridden.max_pages, overridden.options.max_retries) == (5, 7, 1)
    assert options.page_size == 3  # the options given are not changed
    with pytest.raises(TypeError, match="page_sise"):
        make_client(fake, page_sise=5)
    with pytest.raises(TaptouchConfigError, match="page_size must be a whole number from 1 to 500, got 501"):
        ClientOptions(page_size=501)


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"page_size": 2.5}, "page_size must be a whole number from 1 to 500, got 2.5"),
        ({"page_size": True}, "page_size must be a whole number"),
        ({"max_retries": -1}, "max_retries must be a whole number 0 or more, got -1"),
        ({"max_pages": 0}, "max_pages must be a whole number 1 or more"),
        ({"requests_per_second": -1}, "requests_per_second must be None or 0 .no limit. or positive, got -1"),
        ({"requests_per_second": float("nan")}, "requests_per_second must be"),
        ({"timeout": 0}, "timeout must be a number of seconds, more than 0, got 0"),
        ({"deadline": -5.0}, "deadline must be a number of seconds"),
        ({"retry_budget": float("inf")}, "retry_budget must be a number of seconds, 0 or more"),
    ],
)
def test_a_client_refuses_a_tunable_it_would_otherwise_bend(bad, says):
    """A negative rate used to mean no limit, 2.5 pages and -1 retries were taken as given: each is
    refused by name, at construction, with the value it got."""
    with pytest.raises(TaptouchConfigError, match=says):
        ClientOptions(**bad)
    with pytest.raises(TaptouchConfigError, match=says):
        TaptouchClient(client_id="c", client_secret="s", transport=httpx.MockTransport(lambda r: None), **bad)


def test_the_resource_refuses_a_negative_rate_and_a_zero_page_and_a_blank_merchant_is_the_default(monkeypatch):
    from taptouch_resource import TaptouchResource

    creds = {"client_id": "c", "client_secret": "s"}
    with pytest.raises(
        TaptouchConfigError, match="requests_per_second must be None or 0 .no limit. or positive, got -5"
    ):
        TaptouchResource(requests_per_second=-5, **creds).get_client()
    with pytest.raises(TaptouchConfigError, match="page_size must be a whole number from 1 to 500, got 0"):
        TaptouchResource(page_size=0, **creds).get_client()
    for timeout in (0.0, -5.0, float("nan")):  # the resource hands the client an httpx.Timeout
        with pytest.raises(
            TaptouchConfigError, match="timeout .(connect|read). must be a number of seconds, more than 0"
        ):
            TaptouchResource(timeout=timeout, **creds).get_client()
    with pytest.raises(TaptouchConfigError, match="invalid port"):
        TaptouchClient(client_id="c", client_secret="s", base_url="https://api.example:0")
    assert TaptouchResource(requests_per_second=0, **creds).get_client().options.requests_per_second is None
    monkeypatch.setenv("TAPTOUCH_MERCHANT", "   ")
    assert TaptouchResource(**creds).merchant_label() == "default"
    monkeypatch.setenv("TAPTOUCH_MERCHANT", " cafe-north ")
    assert TaptouchResource(merchant="  ", **creds).merchant_label() == "cafe-north"


def test_short_page_stops_and_params_sent():
    fake = FakeAPI(records=[{"id": i} for i in range(250)])
    seen = []

    def spy(request):
        seen.append(dict(request.url.params))
        return fake(request)

    client = TaptouchClient(
        client_id="cid",
        client_secret=SECRET,
        base_url=BASE,
        transport=httpx.MockTransport(spy),
        page_size=100,
        requests_per_second=None,
        sleep=lambda s: None,
    )
    got = list(client.iter_orders(7101, updated_from=T0, updated_to=T1))
    assert len(got) == 250
    api_calls = [p for p in seen if "index" in p]
    assert [p["index"] for p in api_calls] == ["0", "1", "2"]
    assert api_calls[0]["updated_from"] == "2026-11-02T00:00:00+00:00"
    assert api_calls[0]["updated_to"] == "2026-11-03T00:00:00+00:00"
    assert all(p["count"] == "100" for p in api_calls)


def test_iteration_is_lazy():
    fake = FakeAPI(records=[{"id": i} for i in range(1000)])
    client = make_client(fake, page_size=100)
    it = client.iter_orders(1, updated_from=T0, updated_to=T1)
    assert fake.api_calls == 0
    next(it)
    assert fake.api_calls == 1


def test_repeated_page_guard():
    fake = FakeAPI(records=[{"id": i} for i in range(1000)])
    fake.ignore_index = True
    client = make_client(fake, page_size=100)
    with pytest.raises(TaptouchProtocolError, match="identical"):
        list(client.iter_orders(1, updated_from=T0, updated_to=T1))
    assert fake.api_calls == 2


def test_max_pages_bound():
    fake = FakeAPI(records=[{"id": i} for i in range(1000)])
    client = make_client(fake, page_size=10, max_pages=5)
    with pytest.raises(TaptouchProtocolError, match="more than 5 pages"):
        list(client.iter_orders(1, updated_from=T0, updated_to=T1))
    assert fake.api_calls == 5  # stopped at the bound, not after the 100 pages the listing has


def test_concurrent_first_requests_fetch_one_token():
    fake = FakeAPI(records=[{"id": 1}])
    fake.token_delay = 0.05
    client = make_client(fake)
    barrier = threading.Barrier(16)
    errors = []

    def work():
        try:
            barrier.wait()
            list(client.list_stores())
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake.token_calls == 1 and fake.api_calls == 16


def test_token_refreshed_early_with_fake_clock():
    now = [1000.0]
    fake = FakeAPI(lifetime=100)
    auth = ClientCredentialsAuth(
        client_id="cid",
        client_secret=SECRET,
        token_url=BASE + "/auth/v2/token",
        transport=httpx.MockTransport(fake),
        clock=lambda: now[0],
    )
    first = auth.get_token()
    now[0] += 89  # margin = min(300, 10% of 100) = 10 s: still valid at 89 s
    assert auth.get_token() == first and fake.token_calls == 1
    now[0] += 2  # 91 s: inside the margin -> refreshed before it expires
    second = auth.get_token()
    assert second != first and fake.token_calls == 2
    # a 2-day token refreshes 300 s early
    fake.lifetime = 172800
    now[0] += 200
    auth.invalidate(second)
    t = auth.get_token()
    now[0] += 172800 - 301
    assert auth.get_token() == t
    now[0] += 2
    assert auth.get_token() != t


def test_401_refreshes_once_and_resends():
    fake = FakeAPI(records=[{"id": 1}])
    client = make_client(fake)
    list(client.list_stores())
    fake.valid_tokens.clear()  # revoked mid-sync
    assert [r["id"] for r in client.list_stores()] == [1]
    assert fake.token_calls == 2
    assert fake.seen_auth[-2] == "Bearer tok-1" and fake.seen_auth[-1] == "Bearer tok-2"


def test_second_401_raises_auth_error():
    fake = FakeAPI()
    client = make_client(fake)
    always_401 = httpx.Response(401, json=envelope(None, 401, {"code": "invalid_token", "message": "revoked"}))
    fake.faults = [always_401, always_401]
    with pytest.raises(TaptouchAuthError, match="TAPTOUCH_CLIENT_ID"):
        list(client.list_stores())
    assert fake.token_calls == 2


def test_bad_credentials_name_env_vars_and_hide_secret(caplog):
    fake = FakeAPI()
    client = TaptouchClient(
        client_id="cid",
        client_secret="wrong-" + SECRET,
        base_url=BASE,
        transport=httpx.MockTransport(fake),
        sleep=lambda s: None,
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(TaptouchAuthError) as err:
        list(client.list_stores())
    text = str(err.value)
    assert "invalid_client" in text and "TAPTOUCH_CLIENT_SECRET" in text
    assert SECRET not in text and SECRET not in caplog.text and SECRET not in repr(client)
    assert SECRET not in repr(client.auth)


def test_token_error_envelope_form():
    fake = FakeAPI()
    fake.token_faults = [httpx.Response(401, json=envelope(None, 401, {"code": "invalid_client", "message": "nope"}))]
    client = make_client(fake)
    with pytest.raises(TaptouchAuthError, match="invalid_client: nope"):
        list(client.list_stores())


def test_token_endpoint_retried_on_429_and_5xx():
    fake = FakeAPI(records=[{"id": 1}])
    fake.token_faults = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(503, text="<html>down</html>"),
    ]
    sleeps = []
    client = make_client(fake, sleep=sleeps.append)  # the token endpoint's waits too
    assert len(list(client.list_stores())) == 1
    assert fake.token_calls == 3 and sleeps[0] == MIN_RETRY_AFTER


def test_narrower_scope_is_a_clear_error():
    fake = FakeAPI(scope="integration.store")
    client = make_client(fake)
    with pytest.raises(TaptouchAuthError) as err:
        list(client.list_stores())
    assert err.value.missing_scopes == ("integration.order", "integration.inventory")
    assert "integration.order" in str(err.value)


def test_retry_after_zero_waits_a_minimum_and_date_form():
    fake = FakeAPI(records=[{"id": 1}])
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake.faults = [
        httpx.Response(429, headers={"Retry-After": "0"}, json=envelope(None, 429, "slow down")),
        httpx.Response(429, headers={"Retry-After": format_datetime(when, usegmt=True)}, json=envelope(None, 429, "x")),
        httpx.Response(429, headers={"Retry-After": "2"}, json=envelope(None, 429, "x")),
    ]
    sleeps = []
    client = make_client(fake, sleep=sleeps.append)
    assert len(list(client.list_stores())) == 1
    assert sleeps[0] == MIN_RETRY_AFTER
    assert 27 <= sleeps[1] <= 31
    assert sleeps[2] == 2.0
    assert client.stats.rate_limited == 3 and client.stats.retries == 3


def test_parse_retry_after_forms():
    assert parse_retry_after("0") == MIN_RETRY_AFTER
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=lambda: 1445412470.0) == 10.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("100000") == 900.0  # capped at 15 minutes (MAX_RETRY_AFTER)


def test_rate_limit_retries_used_up():
    fake = FakeAPI()
    # 429s with a Retry-After are the server pacing the client: MAX_RATE_LIMITED_RETRIES of them are
    # waited out (within the time budget) before they count against max_retries
    fake.faults = [httpx.Response(429, headers={"Retry-After": "1"}, json=envelope(None, 429, "x"))] * 40
    client = make_client(fake, max_retries=3)
    with pytest.raises(TaptouchRateLimitError) as err:
        list(client.list_stores())
    assert fake.api_calls == MAX_RATE_LIMITED_RETRIES + 4
    assert "lower TAPTOUCH_REQUESTS_PER_SECOND" in str(err.value)  # what to do next


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_server_error_that_outlasts_the_retries_says_what_to_do(status):
    fake = FakeAPI()
    fake.faults = [httpx.Response(status, text="<html>down</html>")] * 10
    client = make_client(fake, max_retries=2, sleep=lambda s: None)
    with pytest.raises(TaptouchAPIError) as err:
        list(client.list_stores())
    assert fake.api_calls == 3
    assert f"HTTP {status}" in str(err.value) and "re-run the partition later" in str(err.value)


def test_5xx_html_retried_with_capped_jittered_backoff():
    fake = FakeAPI(records=[{"id": 1}])
    fake.faults = [httpx.Response(s, text="<html><h1>bad gateway</h1></html>") for s in (500, 502, 503, 504)]
    sleeps = []
    client = make_client(fake, sleep=sleeps.append, max_retries=5, backoff_cap=1.0)
    assert len(list(client.list_stores())) == 1
    assert len(sleeps) == 4 and all(0 <= s <= 1.0 for s in sleeps)
    assert client.stats.server_errors == 4


def test_network_errors_retried():
    fake = FakeAPI(records=[{"id": 1}])
    calls = {"n": 0}

    def flaky(request):
        if "/integration/" in request.url.path and calls["n"] < 2:
            calls["n"] += 1
            raise httpx.ReadTimeout("timed out", request=request)
        return fake(request)

    client = TaptouchClient(
        client_id="cid", client_secret=SECRET, base_url=BASE, transport=httpx.MockTransport(flaky), sleep=lambda s: None
    )
    assert len(list(client.list_stores())) == 1
    assert client.stats.network_errors == 2


@pytest.mark.parametrize(
    "status, code", [(400, "bad_request"), (403, "store_forbidden"), (404, "not_found"), (422, "invalid_parameter")]
)
def test_no_retry_on_client_errors(status, code):
    fake = FakeAPI()
    fake.faults = [
        httpx.Response(status, json=envelope(None, status, {"code": code, "message": "m", "parameter": "count"}))
    ]
    client = make_client(fake)
    with pytest.raises(TaptouchAPIError) as err:
        list(client.iter_orders(7101, updated_from=T0, updated_to=T1))
    assert (err.value.status, err.value.code, err.value.parameter) == (status, code, "count")
    assert fake.api_calls == 1  # not retried
    assert "/integration/v1/stores/7101/orders" in str(err.value) and "(parameter 'count')" in str(err.value)


def test_envelope_checks():
    fake = FakeAPI(records=[{"id": 1}, {"id": 2}])
    client = make_client(fake)
    fake.faults = [httpx.Response(200, text="<html>hello</html>")]
    with pytest.raises(TaptouchProtocolError, match="not JSON"):
        list(client.list_stores())
    fake.faults = [httpx.Response(200, json={"data": []})]
    with pytest.raises(TaptouchProtocolError, match="envelope"):
        list(client.list_stores())
    fake.faults = [httpx.Response(200, json=envelope({"id": 1}))]
    with pytest.raises(TaptouchProtocolError, match="expected a list"):
        list(client.list_stores())
    # ack contradicting a 200: a 4xx ack is an error with the string errors surfaced
    fake.faults = [httpx.Response(200, json=envelope(None, 404, "store not found"))]
    with pytest.raises(TaptouchAPIError) as err:
        list(client.list_stores())
    assert err.value.ack == 404 and "store not found" in str(err.value)
    # a 5xx ack in a 200 is retried like a 5xx
    fake.faults = [httpx.Response(200, json=envelope(None, 500, "oops"))]
    retries = client.stats.retries
    assert [r["id"] for r in client.list_stores()] == [1, 2]
    assert client.stats.retries == retries + 1


def test_rate_limiter_spaces_requests_across_threads():
    from taptouch_resource.retry import RateLimiter

    limiter = RateLimiter(50)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [limiter.acquire() for _ in range(10)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 acquisitions at 50/s need at least 39 intervals of 20 ms
    assert time.monotonic() - start >= 0.75


@pytest.mark.parametrize("url", ["http://api.taptouch.net", "http://10.0.0.5:8080", "ftp://x", "api.taptouch.net"])
def test_plain_http_to_remote_refused(url):
    with pytest.raises(TaptouchConfigError):
        TaptouchClient(client_id="a", client_secret="b", base_url=url)


@pytest.mark.parametrize(
    "url, base_url",
    [
        ("http://127.0.0.1:8765", "http://127.0.0.1:8765"),
        ("http://localhost:1/", "http://localhost:1"),
        ("http://[::1]:9", "http://[::1]:9"),
        (" https://api.taptouch.net/ ", "https://api.taptouch.net"),
    ],
)
def test_loopback_http_and_https_allowed(url, base_url):
    client = TaptouchClient(client_id="a", client_secret="b", base_url=url)
    assert client.base_url == base_url
    assert client.auth.token_url == base_url + "/auth/v2/token"


def test_tls_verification_cannot_be_disabled():
    with pytest.raises(TaptouchConfigError, match="TLS verification"):
        TaptouchClient(client_id="a", client_secret="b", verify=False)


def test_secret_absent_from_repr_logs_and_errors(caplog):
    fake = FakeAPI(records=[{"id": 1}])
    fake.faults = [httpx.Response(500, text="x")]
    with caplog.at_level(logging.DEBUG):
        client = make_client(fake)
        list(client.list_stores())
        res = TaptouchResource(client_id="cid", client_secret=SECRET, base_url=BASE)
        shown = repr(res) + str(res) + repr(client) + repr(client.auth) + repr(client.auth._token)
    assert SECRET not in shown and SECRET not in caplog.text
    assert "tok-1" not in shown and "tok-1" not in caplog.text


def test_resource_requires_credentials():
    with pytest.raises(TaptouchConfigError, match="TAPTOUCH_CLIENT_SECRET"):
        TaptouchResource(client_id="cid", client_secret="").get_client()
    with pytest.raises(TaptouchConfigError, match="TAPTOUCH_CLIENT_ID"):
        TaptouchResource(client_id=" ", client_secret="x").get_client()


def test_resource_clients_share_one_token_over_http():
    from taptouch_sandbox import Sandbox, SandboxConfig

    sb = Sandbox(SandboxConfig(stores=2, days=1, orders_per_day=5))
    with sb.serve() as url:
        res = TaptouchResource(client_id="sandbox-client", client_secret="sandbox-secret", base_url=url)
        for _ in range(3):
            assert [s["id"] for s in res.get_client().list_stores()] == sb.store_ids()
    assert sb.stats.token_requests == 1


def test_jsonutil_roundtrip_exact():
    text = '{"a":45.50,"b":[1,2.000,-0.01],"c":"x\\ty\\u0000"}'
    doc = jsonutil.loads(text)
    assert doc["a"] == Decimal("45.50") and str(doc["a"]) == "45.50"
    assert jsonutil.dumps({"a": doc["a"], "b": doc["b"]}) == '{"a":45.50,"b":[1,2.000,-0.01]}'
    assert jsonutil.loads("NaN").is_nan()
    assert json.loads(jsonutil.dumps({"s": 'tab\t"q" \\ 🍰'})) == {"s": 'tab\t"q" \\ 🍰'}


def test_a_compressed_answer_that_unpacks_past_the_limit_fails_the_listing_not_the_memory():
    import gzip
    import resource

    fake = FakeAPI()
    # 200 MB of spaces inside a valid envelope, gzip-compressed to about 200 KB: a zip bomb
    bomb = gzip.compress(b'{"status": {"ack": 200}, "data": [' + b" " * (200 * 2**20) + b"]}", 9)
    assert len(bomb) < 400_000
    fake.faults = [httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=bomb)]
    client = make_client(fake, max_response_bytes=8 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TaptouchProtocolError, match="more than 8388608 bytes once decompressed"):
        list(client.list_stores())
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100  # the bomb was never unpacked whole (it would take 200 MB)
    # an ordinary gzip answer is read as before
    fake.faults = [
        httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, content=gzip.compress(json.dumps(envelope([{"id": 1}])).encode())
        )
    ]
    assert [r["id"] for r in make_client(fake).list_stores()] == [1]


def test_an_envelope_that_repeats_data_is_refused_not_read_as_the_last_copy():
    fake = FakeAPI()
    fake.faults = [httpx.Response(200, content=b'{"status": {"ack": 200}, "data": [{"id": 1}, {"id": 2}], "data": []}')]
    with pytest.raises(TaptouchProtocolError, match="'data' more than once"):
        list(make_client(fake).list_stores())
    # a record that has a "data" field of its own is an ordinary record
    fake.faults = [httpx.Response(200, content=b'{"status": {"ack": 200}, "data": [{"id": 1, "data": {"data": 2}}]}')]
    assert [r["id"] for r in make_client(fake).list_stores()] == [1]


def test_a_token_answer_that_unpacks_past_a_megabyte_is_refused():
    import gzip

    fake = FakeAPI()
    fake.token_faults = [
        httpx.Response(
            200,
            headers={"Content-Encoding": "gzip"},
            content=gzip.compress(b'{"access_token": "' + b"x" * (50 * 2**20) + b'"}'),
        )
    ]
    with pytest.raises(TaptouchProtocolError, match="more than 1048576 bytes"):
        make_client(fake).auth.get_token()
    assert make_client(fake).auth.get_token() == "tok-2"  # an ordinary answer is read as before


def test_client_credentials_auth_refuses_an_async_client_instead_of_sending_no_token():
    """It only attached its token through sync_auth_flow: an httpx.AsyncClient sent requests without
    one (401 from any server). It now refuses, saying what to do."""
    import asyncio

    from taptouch_resource import ClientCredentialsAuth

    sent = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(200))
    auth = ClientCredentialsAuth(client_id="c", client_secret="s", token_url="https://api.example/auth/v2/token")

    async def call():
        async with httpx.AsyncClient(transport=transport, auth=auth) as c:
            await c.get("https://api.example/integration/v1/stores")

    with pytest.raises(TaptouchConfigError, match="works with httpx.Client.*get_token"):
        asyncio.run(call())
    assert sent == []
