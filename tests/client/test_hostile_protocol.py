"""The client against a hostile or careless server: answers the contract does not foresee, or
foresees only as faults. Each test states the answer and the outcome it must have (records exact,
a loud error saying what to do, retried or not). httpx.MockTransport unless real sockets matter."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import httpx
import pytest

from pipelines.sync import is_transient
from taptouch_resource import (
    ClientCredentialsAuth,
    InMemoryTokens,
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchClient,
    TaptouchConfigError,
    TaptouchProtocolError,
)

SECRET = "hostile-secret-0123456789"
BASE = "https://api.taptouch.test"
SCOPES = "integration.store integration.order integration.inventory"


def envelope(data, ack=200, errors=None, **extra):
    return {"status": {"timestamp": 1764300000, "ack": ack, "errors": errors}, "data": data, **extra}


def token_answer(n: int, **over) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": f"tok-{n}", "token_type": "Bearer", "expires_in": 3600, "scope": SCOPES, **over}
    )


class Server:
    """Token endpoint plus a scripted API: ``api`` answers each API request (a callable of
    (request, call number) or a list served in turn, the last one repeated)."""

    def __init__(self, api=None, token=None):
        self.api = api if api is not None else [httpx.Response(200, json=envelope([{"id": 1}]))]
        self.token = token
        self.api_calls: list[httpx.Request] = []
        self.token_calls = 0
        self.hosts: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        if request.url.path == "/auth/v2/token":
            self.token_calls += 1
            if self.token is None:
                return token_answer(self.token_calls)
            got = self.token(request, self.token_calls) if callable(self.token) else self.token
            return got
        self.api_calls.append(request)
        n = len(self.api_calls)
        if callable(self.api):
            return self.api(request, n)
        served = self.api[min(n, len(self.api)) - 1]  # the last one, maybe again: a fresh copy each time
        return httpx.Response(served.status_code, headers=served.headers, stream=served.stream)


def client_for(server: Server, **kw) -> TaptouchClient:
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("requests_per_second", None)
    return TaptouchClient(
        client_id="cid", client_secret=SECRET, base_url=BASE, transport=httpx.MockTransport(server), **kw
    )


def raw(body: bytes, status: int = 200, headers: dict | None = None) -> httpx.Response:
    """An answer whose bytes are sent as they are (no encoding applied by httpx on the way)."""
    return httpx.Response(status, headers=headers or {}, stream=httpx.ByteStream(body))


# ------------------------------------------------------------------------------------------------
# bodies: encodings and charsets


def test_a_body_that_lies_about_its_gzip_encoding_is_a_protocol_error_not_a_raw_httpx_error():
    # sync_inventory catches TaptouchError per store: a raw httpx.DecodingError took every store down
    server = Server([raw(json.dumps(envelope([{"id": 1}])).encode(), headers={"Content-Encoding": "gzip"})])
    with pytest.raises(TaptouchProtocolError, match="not valid gzip although its Content-Encoding says so"):
        list(client_for(server).list_stores())
    assert len(server.api_calls) == 1  # a misconfigured server: not retried


@pytest.mark.parametrize(
    "body, content_type",
    [
        (
            b"\xef\xbb\xbf" + json.dumps(envelope([{"id": 1, "name": "Café"}]), ensure_ascii=False).encode(),
            "application/json",
        ),
        (json.dumps(envelope([{"id": 1, "name": "Café"}]), ensure_ascii=False).encode("utf-16"), "application/json"),
        (
            json.dumps(envelope([{"id": 1, "name": "Café"}]), ensure_ascii=False).encode("utf-16-le"),
            "application/json; charset=UTF-16LE",
        ),
        (
            json.dumps(envelope([{"id": 1, "name": "Café"}]), ensure_ascii=False).encode("latin-1"),
            "application/json; charset=ISO-8859-1",
        ),
        # a server that says latin-1 but sends UTF-8 (common): the UTF-8 is kept, never garbled to "CafÃ©"
        (
            json.dumps(envelope([{"id": 1, "name": "Café"}]), ensure_ascii=False).encode("utf-8"),
            "application/json; charset=iso-8859-1",
        ),
    ],
)
def test_a_bom_or_a_declared_charset_still_delivers_the_record_exactly(body, content_type):
    def server():
        return Server([raw(body, headers={"Content-Type": content_type})])

    assert list(client_for(server()).list_stores()) == [{"id": 1, "name": "Café"}]
    assert list(client_for(server()).iter_inventory_records(7101)) == ['{"id": 1, "name": "Café"}'.encode()]


def test_a_utf8_body_mislabelled_latin1_keeps_its_text_when_one_record_is_broken():
    body = '{"status": {"ack": 200}, "data": [{"id": 1, "name": "Café"}, '.encode() + b'{"id": 2, "name": "Caf\xe9"}]}'
    server = Server([raw(body, headers={"Content-Type": "application/json; charset=iso-8859-1"})])
    assert list(client_for(server).list_stores()) == [{"id": 1, "name": "Café"}, b'{"id": 2, "name": "Caf\xe9"}']


# ------------------------------------------------------------------------------------------------
# the envelope's ack


def test_an_envelope_without_a_usable_ack_says_so_instead_of_an_empty_error():
    server = Server([httpx.Response(200, json={"status": {"code": 500}, "data": []})])
    with pytest.raises(TaptouchAPIError, match="envelope's status has no usable 'ack' \\(got none\\)") as err:
        list(client_for(server).list_stores())
    assert len(server.api_calls) == 1 and not is_transient(err.value)


def test_a_200_acking_503_is_retried_and_if_it_persists_is_reported_as_transient():
    acking = httpx.Response(200, json=envelope(None, "503", "maintenance"))  # a numeric string, too
    server = Server([acking, httpx.Response(200, json=envelope([{"id": 1}]))])
    assert [r["id"] for r in client_for(server).list_stores()] == [1]
    assert len(server.api_calls) == 2

    server = Server([acking])
    with pytest.raises(TaptouchAPIError) as err:
        list(client_for(server, max_retries=2).list_stores())
    assert (err.value.status, err.value.http_status, err.value.ack) == (503, 200, "503")
    assert is_transient(err.value)  # the pipeline retries the step, as for an HTTP 503
    assert "ack 503 (in an HTTP 200 answer)" in str(err.value) and len(server.api_calls) == 3


def test_a_200_acking_401_gets_one_fresh_token_then_a_clear_auth_error():
    revoked = httpx.Response(200, json=envelope(None, 401, {"code": "invalid_token", "message": "expired"}))
    server = Server(
        lambda req, n: (
            revoked
            if req.headers["Authorization"] == "Bearer tok-1"
            else httpx.Response(200, json=envelope([{"id": 1}]))
        )
    )
    assert [r["id"] for r in client_for(server).list_stores()] == [1]
    assert [r.headers["Authorization"] for r in server.api_calls] == ["Bearer tok-1", "Bearer tok-2"]

    server = Server([revoked])
    with pytest.raises(TaptouchAuthError, match="ack 401 in an HTTP 200.*TAPTOUCH_CLIENT_ID") as err:
        list(client_for(server).list_stores())
    assert err.value.status == 401 and len(server.api_calls) == 2 and server.token_calls == 2


# ------------------------------------------------------------------------------------------------
# statuses


def test_a_redirect_to_another_host_is_not_followed_and_says_what_to_fix():
    server = Server([httpx.Response(302, headers={"Location": "https://evil.example/steal?q=1"})])
    with pytest.raises(TaptouchAPIError) as err:
        list(client_for(server).list_stores())
    assert err.value.status == 302 and not is_transient(err.value)
    assert "redirect to https://evil.example" in str(err.value) and "TAPTOUCH_BASE_URL" in str(err.value)
    assert "evil.example" not in server.hosts and len(server.api_calls) == 1  # the bearer token stayed home


def test_a_redirecting_token_endpoint_is_not_reported_as_rejected_credentials():
    server = Server(token=httpx.Response(307, headers={"Location": "https://evil.example/auth/v2/token"}))
    with pytest.raises(TaptouchAPIError) as err:
        client_for(server).auth.get_token()
    assert err.value.status == 307 and "evil.example" not in server.hosts and server.token_calls == 1
    assert "redirect to https://evil.example" in str(err.value) and "client secret" in str(err.value)


@pytest.mark.parametrize("status", [408, 520, 522, 524])
def test_proxy_timeouts_are_retried_like_a_503(status):
    server = Server(
        [httpx.Response(status, text="<html>origin timeout</html>"), httpx.Response(200, json=envelope([{"id": 1}]))]
    )
    assert [r["id"] for r in client_for(server).list_stores()] == [1]
    assert len(server.api_calls) == 2


def test_retry_after_on_a_503_is_honoured():
    sleeps: list[float] = []
    server = Server(
        [
            httpx.Response(503, headers={"Retry-After": "7"}, text="down"),
            httpx.Response(200, json=envelope([{"id": 1}])),
        ]
    )
    assert [r["id"] for r in client_for(server, sleep=sleeps.append).list_stores()] == [1]
    assert sleeps == [7.0]


@pytest.mark.parametrize(
    "header, wait",
    [
        ("-5", 0.25),
        ("NaN", None),
        ("inf", 900.0),
        ("1e400", 900.0),
        ("Mon, 01 Jan 1990 00:00:00 GMT", 0.25),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 900.0),
    ],
)
def test_hostile_retry_after_values_are_bounded(header, wait):
    sleeps: list[float] = []
    server = Server([httpx.Response(429, headers={"Retry-After": header}), httpx.Response(200, json=envelope([]))])
    assert list(client_for(server, sleep=sleeps.append, retry_budget=3600).list_stores()) == []
    assert len(sleeps) == 1 and (sleeps[0] == wait if wait is not None else 1.0 <= sleeps[0] <= 30.0)


def test_an_echoed_token_or_secret_in_an_error_is_masked():
    def echo(request, n):
        said = f"denied for {request.headers['Authorization']} (client secret {SECRET})"
        return httpx.Response(403, json=envelope(None, 403, {"code": "x", "message": said, "parameter": SECRET}))

    with pytest.raises(TaptouchAPIError) as err:
        list(client_for(Server(echo)).list_stores())
    text = str(err.value)
    assert "tok-1" not in text and SECRET not in text and err.value.parameter == "***"
    assert "denied for Bearer *** (client secret ***)" in text


# ------------------------------------------------------------------------------------------------
# pagination


def test_pages_that_cycle_are_caught_not_followed_to_the_page_bound():
    def cycling(request, n):  # index 0, 1, 0, 1, ...
        index = int(request.url.params["index"])
        return httpx.Response(200, json=envelope([{"id": 10 * (index % 2) + k} for k in range(2)]))

    server = Server(cycling)
    with pytest.raises(TaptouchProtocolError, match="page 2 is identical to page 0"):
        list(client_for(server, page_size=2).list_stores())
    assert len(server.api_calls) == 3


@pytest.mark.parametrize(
    "extra, complete",
    [
        ({"has_more": True}, False),
        ({"pagination": {"total": 5}}, True),  # a total is not in the contract and moves with the data
        ({"meta": {"hasMore": True}}, False),
        ({"has_more": False, "total": 3}, True),
        ({"total": 2}, True),  # a total below what arrived (duplicates across pages) does not matter
    ],
)
def test_a_short_last_page_contradicted_by_the_server_is_not_taken_as_complete(extra, complete):
    pages = [envelope([{"id": 1}, {"id": 2}]), envelope([{"id": 3}], **extra)]
    server = Server([httpx.Response(200, json=p) for p in pages])
    if complete:
        assert [r["id"] for r in client_for(server, page_size=2).iter_inventory(7101)] == [1, 2, 3]
    else:
        with pytest.raises(TaptouchProtocolError, match="may be truncated"):
            list(client_for(server, page_size=2).iter_inventory(7101))


def test_an_inventory_page_cut_short_once_is_read_on_and_nothing_comes_twice():
    """The end of an inventory listing is asked for twice; a full second answer means the first was
    cut (HTTP 200), so the listing reads on. Each record is yielded once."""
    answers = {0: [[1, 2]], 1: [[3], [3, 4]], 2: [[5], [5]]}  # page 1 cut short once

    def api(request, n):
        pages = answers[int(request.url.params["index"])]
        return httpx.Response(200, json=envelope([{"id": i} for i in (pages.pop(0) if len(pages) > 1 else pages[0])]))

    server = Server(api)
    assert [r["id"] for r in client_for(server, page_size=2).iter_inventory(7101)] == [1, 2, 3, 4, 5]
    assert [int(r.url.params["index"]) for r in server.api_calls] == [0, 1, 1, 2, 2]


def test_an_inventory_end_that_answers_two_short_sizes_is_not_taken_as_complete():
    """Page 1 answers 3 records, then 7 (both short of 10): where the listing ends is unknown. Taken
    as complete, it would delist the products of every later page."""
    answers = {0: [list(range(10))], 1: [[10, 11, 12], list(range(10, 17))]}

    def api(request, n):
        pages = answers[int(request.url.params["index"])]
        return httpx.Response(200, json=envelope([{"id": i} for i in (pages.pop(0) if len(pages) > 1 else pages[0])]))

    server = Server(api)
    with pytest.raises(TaptouchProtocolError, match="held 3 records, and 7 when asked again: where the listing ends"):
        list(client_for(server, page_size=10).iter_inventory_records(7101))


@pytest.mark.parametrize(
    "body, match",
    [
        (b"[]", "not the Taptouch envelope"),
        (b"null", "not the Taptouch envelope"),
        (b'{"status": {"ack": 200}}', "'data' is missing"),
        (b'{"status": {"ack": 200}, "data": {"id": 1}}', "not a list"),
        (b"<html><body>Welcome</body></html>", "not JSON"),
    ],
)
def test_unusable_200_answers_fail_the_listing_without_a_retry(body, match):
    server = Server([raw(body, headers={"Content-Type": "text/html; charset=utf-8"})])
    with pytest.raises(TaptouchProtocolError, match=match):
        list(client_for(server).iter_inventory(7101))
    assert len(server.api_calls) == 1


def test_a_204_is_an_error_not_an_empty_listing():
    server = Server([httpx.Response(204)])
    with pytest.raises(TaptouchAPIError) as err:
        list(client_for(server).iter_inventory(7101))
    assert err.value.status == 204 and "check TAPTOUCH_BASE_URL" in str(err.value)


# ------------------------------------------------------------------------------------------------
# the token endpoint


@pytest.mark.parametrize("access_token", ["abc\r\nX-Injected: 1", "tøken", "two words", "tab\there"])
def test_an_access_token_that_cannot_go_into_a_header_is_refused_and_never_stored(access_token):
    store = InMemoryTokens()
    auth = ClientCredentialsAuth(
        client_id="cid",
        client_secret=SECRET,
        token_url=BASE + "/auth/v2/token",
        transport=httpx.MockTransport(lambda r: token_answer(1, access_token=access_token)),
        store=store,
    )
    with pytest.raises(TaptouchProtocolError, match="cannot be sent in an Authorization header") as err:
        auth.get_token()
    assert access_token not in str(err.value) and store._tokens == {}


def test_a_token_of_another_type_than_bearer_is_not_used():
    server = Server(token=token_answer(1, token_type="mac"))
    with pytest.raises(TaptouchProtocolError, match="token_type 'mac'.*only Bearer"):
        list(client_for(server).list_stores())
    assert server.api_calls == []
    assert client_for(Server(token=token_answer(1, token_type="bearer"))).auth.get_token() == "tok-1"


def test_a_scope_granted_as_a_list_is_still_compared():
    server = Server(token=token_answer(1, scope=["integration.store"]))
    with pytest.raises(TaptouchAuthError) as err:
        client_for(server).auth.get_token()
    assert err.value.missing_scopes == ("integration.order", "integration.inventory")


def test_token_errors_inside_a_200_are_read_as_the_errors_they_are():
    enveloped = httpx.Response(
        200, json={"status": {"ack": 401, "errors": {"code": "invalid_client", "message": "unknown client"}}}
    )
    with pytest.raises(TaptouchAuthError, match="invalid_client: unknown client.*TAPTOUCH_CLIENT_SECRET"):
        client_for(Server(token=enveloped)).auth.get_token()
    rfc = httpx.Response(200, json={"error": "invalid_client", "error_description": "bad secret"})
    with pytest.raises(TaptouchAuthError, match="invalid_client: bad secret"):
        client_for(Server(token=rfc)).auth.get_token()
    busy = httpx.Response(200, json={"status": {"ack": 503, "errors": "busy"}})
    server = Server(token=lambda req, n: busy if n == 1 else token_answer(n))
    assert client_for(server).auth.get_token() == "tok-2"


# ------------------------------------------------------------------------------------------------
# transport: real sockets


class RawServer:
    """A loopback HTTP/1.1 server that answers each connection with scripted raw bytes (the token
    endpoint gets a token); ``script`` items: bytes, or a list of (bytes, delay) to trickle."""

    def __init__(self, script):
        self.script = list(script)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.api_calls = 0
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                if b"/auth/v2/token" in head.split(b"\r\n", 1)[0]:
                    body = json.dumps(
                        {"access_token": "tok-raw", "token_type": "Bearer", "expires_in": 3600, "scope": SCOPES}
                    ).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body
                    )
                    return
                self.api_calls += 1
                step = self.script[min(self.api_calls, len(self.script)) - 1]
                for piece, delay in step if isinstance(step, list) else [(step, 0)]:
                    if self.stop.is_set():
                        return
                    time.sleep(delay)
                    conn.sendall(piece)
            except OSError:
                return

    def close(self):
        self.stop.set()
        self.sock.close()


GOOD = json.dumps(envelope([{"id": 1}])).encode()
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"


def test_a_body_that_never_ends_is_cut_by_the_total_deadline_then_retried():
    trickle = [(OK_HEAD + b"Content-Length: 100000\r\n\r\n", 0)] + [(b" ", 0.1)] * 200  # 20 s of dribble
    server = RawServer([trickle, OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD])
    try:
        client = TaptouchClient(
            client_id="cid",
            client_secret=SECRET,
            base_url=server.url,
            timeout=1.0,
            deadline=1.5,
            requests_per_second=None,
            sleep=lambda s: None,
        )
        started = time.monotonic()
        assert [r["id"] for r in client.list_stores()] == [1]
        assert time.monotonic() - started < 6 and server.api_calls == 2
        assert client.stats.network_errors == 1
    finally:
        server.close()


def test_a_body_shorter_than_its_content_length_is_retried_not_parsed():
    cut = OK_HEAD + b"Content-Length: %d\r\n\r\n" % (len(GOOD) + 50) + GOOD
    server = RawServer([cut, OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(GOOD) + GOOD])
    try:
        client = TaptouchClient(
            client_id="cid",
            client_secret=SECRET,
            base_url=server.url,
            timeout=5.0,
            requests_per_second=None,
            sleep=lambda s: None,
        )
        assert [r["id"] for r in client.list_stores()] == [1]
        assert server.api_calls == 2 and client.stats.network_errors == 1
    finally:
        server.close()


def test_an_unverifiable_certificate_is_a_config_error_not_five_retries():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        try:
            raise ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
        except ssl.SSLCertVerificationError as exc:
            raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED]", request=request) from exc

    auth = ClientCredentialsAuth(
        client_id="cid",
        client_secret=SECRET,
        token_url=BASE + "/auth/v2/token",
        transport=httpx.MockTransport(lambda r: token_answer(1)),
    )
    client = TaptouchClient(
        client_id="cid",
        client_secret=SECRET,
        base_url=BASE,
        auth=auth,
        transport=httpx.MockTransport(handler),
        requests_per_second=None,
        sleep=lambda s: None,
    )
    with pytest.raises(TaptouchConfigError, match="TLS certificate of api.taptouch.test could not be verified"):
        list(client.list_stores())
    assert calls == ["/integration/v1/stores"]
