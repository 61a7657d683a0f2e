"""The alert outbox (pipelines/alert_outbox.py) on a real PostgreSQL and real local webhooks:
bounded ticks, backoff, one sender per row, whole-request deadlines."""

from __future__ import annotations

import socket
import threading
import time

import psycopg
import pytest

from pipelines import alert_outbox as outbox
from tests.support.webhook import Receiver


def alerts_for(n: int) -> list[outbox.Alert]:
    return [
        outbox.Alert(
            key=outbox.alert_key("run-failure", f"run-{i:03d}"), kind="run_failure", body={"text": f"run {i} failed"}
        )
        for i in range(n)
    ]


def sent_keys(conn) -> list[str]:
    return [
        k
        for (k,) in conn.execute(
            "select idempotency_key from taptouch_meta.alert_outbox where sent_at is not null order by idempotency_key"
        )
    ]


def test_backoff_doubles_from_15_seconds_up_to_an_hour():
    assert [outbox.backoff(n) for n in range(1, 10)] == [15, 30, 60, 120, 240, 480, 960, 1920, 3600]
    assert outbox.backoff(10_000) == 3600


def test_keys_are_header_safe_and_name_the_event():
    key = outbox.alert_key("check-failure", "r1", "north/orders", "schema drift", "2026-11-02|é")
    assert key == "check-failure:r1:north/orders:schema%20drift:2026-11-02%7C%C3%A9"
    assert key.isascii() and key.isprintable()


def test_a_tick_sends_a_bounded_batch_and_the_next_tick_the_rest(migrated_db, monkeypatch):
    with Receiver() as receiver, psycopg.connect(migrated_db, autocommit=True) as conn:
        assert outbox.enqueue(conn, alerts_for(outbox.BATCH + 5)) == outbox.BATCH + 5
        assert outbox.enqueue(conn, alerts_for(3)) == 0  # already there
        first = outbox.deliver_due(conn, receiver.url)
        assert (first.sent, first.failed, first.pending) == (outbox.BATCH, 0, 5)
        second = outbox.deliver_due(conn, receiver.url)
        assert (second.sent, second.pending) == (5, 0)
        assert sorted(b["idempotency_key"] for b in receiver.bodies) == [a.key for a in alerts_for(outbox.BATCH + 5)]


def test_a_tick_stays_within_its_budget_whatever_each_post_takes(migrated_db):
    def slow_send(body, key, url, *, deadline):
        time.sleep(min(0.4, deadline))

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        outbox.enqueue(conn, alerts_for(10))
        started = time.monotonic()
        delivery = outbox.deliver_due(conn, "http://unused", budget=1.5, send=slow_send)
        assert time.monotonic() - started < 2.0
        assert 1 <= delivery.sent <= 3 and delivery.pending == 10 - delivery.sent
        # the rows the tick had no time for used no attempt
        assert (
            conn.execute("select count(*) from taptouch_meta.alert_outbox where attempts = 0").fetchone()[0]
            == 10 - delivery.sent
        )


def test_two_deliverers_at_once_send_each_alert_once(migrated_db):
    """Both alert sensors' ticks, or two daemons: a claimed row is skipped by the other."""
    with Receiver() as receiver:
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            outbox.enqueue(conn, alerts_for(12))

        def slow_send(body, key, url, *, deadline):
            time.sleep(0.05)
            outbox.post(body, key, url, deadline=deadline)

        def tick():
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                outbox.deliver_due(conn, receiver.url, send=slow_send)

        workers = [threading.Thread(target=tick) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        keys = sorted(b["idempotency_key"] for b in receiver.bodies)
        assert keys == [a.key for a in alerts_for(12)]  # every one, none twice


def test_a_failure_backs_off_and_stops_the_tick(migrated_db):
    with Receiver(status=503) as receiver, psycopg.connect(migrated_db, autocommit=True) as conn:
        outbox.enqueue(conn, alerts_for(3))
        delivery = outbox.deliver_due(conn, receiver.url)
        assert (delivery.sent, delivery.failed, delivery.pending) == (0, 1, 3)
        assert "HTTP 503" in delivery.error and "XXXXsecretpath" not in delivery.error
        wait = conn.execute(
            "select extract(epoch from next_attempt_at - last_attempt_at) from taptouch_meta.alert_outbox "
            "where attempts = 1"
        ).fetchone()[0]
        assert abs(float(wait) - outbox.BACKOFF_BASE) < 1
        assert len(receiver.bodies) == 1
        assert conn.execute("select count(*) from taptouch_meta.alert_outbox where attempts = 0").fetchone()[0] == 2
        assert outbox.deliver_due(conn, receiver.url).failed == 1  # the rows not tried yet are still due
        conn.execute("update taptouch_meta.alert_outbox set next_attempt_at = now() + interval '1 hour'")
        first = conn.execute(
            "select idempotency_key from taptouch_meta.alert_outbox where attempts = 1 order by idempotency_key limit 1"
        ).fetchone()[0]
        conn.execute(
            "update taptouch_meta.alert_outbox set next_attempt_at = now() where idempotency_key = %s", (first,)
        )
        outbox.deliver_due(conn, receiver.url)
        attempts, wait = conn.execute(
            "select attempts, extract(epoch from next_attempt_at - last_attempt_at) "
            "from taptouch_meta.alert_outbox where idempotency_key = %s",
            (first,),
        ).fetchone()
        assert attempts == 2 and float(wait) == pytest.approx(2 * outbox.BACKOFF_BASE, abs=1)
        assert len(receiver.bodies) == 3


def test_a_crashed_claim_is_sent_again_after_the_lease(migrated_db):
    """A process that dies between the claim and the POST's outcome: at least once, not lost."""
    with Receiver() as receiver, psycopg.connect(migrated_db, autocommit=True) as conn:
        outbox.enqueue(conn, alerts_for(1))

        def crash(body, key, url, *, deadline):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            outbox.deliver_due(conn, receiver.url, send=crash)
        assert outbox.deliver_due(conn, receiver.url).sent == 0  # leased
        conn.execute("update taptouch_meta.alert_outbox set next_attempt_at = now() - interval '1 second'")
        assert outbox.deliver_due(conn, receiver.url).sent == 1
        assert sent_keys(conn) == [alerts_for(1)[0].key]


def test_a_webhook_that_accepts_and_never_answers_is_given_up_at_the_deadline():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
    try:
        started = time.monotonic()
        with pytest.raises(outbox.DeliveryError, match="did not answer within 1 s"):
            outbox.post({"text": "x"}, "k", url, deadline=1.0)
        assert time.monotonic() - started < 1.5
    finally:
        silent.close()
        for worker in list(outbox._abandoned):
            worker.join(5)


def test_posts_abandoned_at_their_deadline_are_bounded():
    """A webhook that trickles its headers keeps an abandoned POST's thread alive; past
    MAX_ABANDONED of them, an attempt fails at once instead of starting another."""
    with Receiver(trickle=0.2) as receiver:
        for _ in range(outbox.MAX_ABANDONED):
            with pytest.raises(outbox.DeliveryError, match="did not answer"):
                outbox.post({"text": "x"}, "k", receiver.url, deadline=0.5)
        started = time.monotonic()
        with pytest.raises(outbox.DeliveryError, match="still answering"):
            outbox.post({"text": "x"}, "k", receiver.url, deadline=0.5)
        assert time.monotonic() - started < 0.2
        assert len(receiver.bodies) == outbox.MAX_ABANDONED


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://192.0.2.2:18999/services/XXXXsecretpath", "plain http://"),
        ("https://hooks.example:0/XXXXsecretpath", "is not a URL"),
        ("hooks.example/XXXXsecretpath", "must be an https:// URL"),
    ],
)
def test_a_post_to_a_url_that_cannot_take_it_is_refused_before_any_connection(url, says):
    """Every path that POSTs (the delivery sensor, and the direct fallback when the outbox is
    unavailable) checks the URL first: plain http to another host would carry the secret URL and
    the alert in the clear."""
    import httpx

    tried = []
    transport = httpx.MockTransport(lambda r: tried.append(r) or httpx.Response(200))
    with pytest.raises(outbox.DeliveryError, match=f"TAPTOUCH_ALERT_WEBHOOK_URL.*{says}") as err:
        outbox.post({"text": "x"}, "key-1", url, transport=transport)
    assert tried == [] and "XXXXsecretpath" not in str(err.value)
