"""A hostile review of the shared request budget (2026-12-06): an HTTP 200 whose envelope acks 429
is a 429 (the contract: ack is the HTTP code)."""

from __future__ import annotations

import httpx

from taptouch_resource import TaptouchClient


class _RecordingLimiter:
    """A RequestLimiter that records what the client tells it."""

    def __init__(self):
        self.penalties: list[float] = []
        self.acquired = 0

    def acquire(self) -> float:
        self.acquired += 1
        return 0.0

    def penalize(self, seconds: float) -> None:
        self.penalties.append(seconds)


def test_a_429_acked_inside_an_http_200_pauses_the_shared_budget_like_an_http_429():
    """The contract: ``status.ack`` is the HTTP code, "check both". The client retries an HTTP 200
    whose envelope acks 429 (and even raises TaptouchRateLimitError for it once retries run out),
    but unlike an HTTP 429 it neither tells the shared budget (no other process or thread pauses),
    nor counts it as rate limited, nor waits at least MIN_429_WAIT / the Retry-After: it comes
    back after a jittered back-off of up to 0.5 s."""
    from taptouch_resource.retry import MIN_429_WAIT

    calls = {"n": 0}

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(
                200,
                headers={"Retry-After": "30"},
                json={
                    "status": {
                        "timestamp": 1764300000,
                        "ack": 429,
                        "errors": {"code": "rate_limited", "message": "slow"},
                    },
                    "data": None,
                },
            )
        return httpx.Response(200, json={"status": {"timestamp": 1764300000, "ack": 200, "errors": None}, "data": []})

    waits: list[float] = []
    limiter = _RecordingLimiter()
    client = TaptouchClient(
        client_id="cid",
        client_secret="secret-value-xyz",
        base_url="https://api.taptouch.test",
        transport=httpx.MockTransport(server),
        limiter=limiter,
        sleep=waits.append,
    )
    assert list(client.list_stores()) == []
    assert calls["n"] == 2
    assert client.stats.rate_limited == 1, "an acked 429 is not counted as rate limited"
    assert limiter.penalties, "an acked 429 did not pause the shared budget (other processes keep sending)"
    assert waits and max(waits) >= MIN_429_WAIT, f"the retry came back after {waits}"
