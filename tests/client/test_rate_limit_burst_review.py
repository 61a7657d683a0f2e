"""429 bursts with ``Retry-After: 0`` (the contract, section 6): each answer says "retry now"; the
client spends its five retries in about a second of 0.25 s waits and fails the request (the store, and
the run), although the server asked for no wait at all and its time budget (600 s) is untouched."""

from __future__ import annotations

import httpx

from tests.support.contract_api import FakeAPI, client_of, store


def _burst(n: int, retry_after: str) -> FakeAPI:
    fake = FakeAPI([store(1), store(2)])
    left = {"n": n}

    def before(request):
        if left["n"] > 0:
            left["n"] -= 1
            return httpx.Response(
                429,
                headers={"Retry-After": retry_after, "content-type": "application/json"},
                json={
                    "status": {
                        "timestamp": 1764300000,
                        "ack": 429,
                        "errors": {"code": "rate_limited", "message": "slow down"},
                    },
                    "data": None,
                },
            )
        return None

    fake.before = before
    return fake


def test_a_burst_of_eight_429s_with_retry_after_0_is_waited_out():
    fake = _burst(8, "0")
    waits: list[float] = []
    client = client_of(fake, page_size=100)
    client._sleep = waits.append  # the retry engine's clock
    ids = [s["id"] for s in client.list_stores()]
    assert ids == [1, 2]
    assert sum(waits) < 600  # within the retry budget
