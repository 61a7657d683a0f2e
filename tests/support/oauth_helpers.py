"""Helpers for the merchant-authorization tests: a test client playing the merchant's browser."""

from __future__ import annotations

import re
import threading
from typing import Callable

import httpx

from pipelines.authorize import AuthorizeResult, run_authorize
from taptouch_sandbox import Sandbox
from pipelines.warehouse.token_store import TokenCipher, TokenStore

CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
BROWSER_THREAD = "merchant-browser"


class Browser:
    """Follows the authorize URL the command prints, like the merchant's browser: the sandbox answers
    with a redirect to the loopback callback, which the browser then opens. ``tamper`` may rewrite
    the redirect (a forged or stale state)."""

    def __init__(self, tamper: Callable[[str], str] | None = None):
        self.tamper = tamper
        self.pages: list[httpx.Response] = []
        self.threads: list[threading.Thread] = []

    def __call__(self, text: str) -> None:  # the ``announce`` of run_authorize
        match = re.search(r"https?://\S+/auth/v2/authorize\?\S+", text)
        if match:
            thread = threading.Thread(target=self._visit, args=(match.group(0),), name=BROWSER_THREAD, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _visit(self, url: str) -> None:
        with httpx.Client(timeout=10) as http:
            answer = http.get(url)
            self.pages.append(answer)
            if answer.status_code == 302:
                location = answer.headers["location"]
                self.pages.append(http.get(self.tamper(location) if self.tamper else location))

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10)


def make_store(database_url: str, **kwargs) -> TokenStore:
    return TokenStore(database_url, cipher=TokenCipher.from_env(CLIENT_ID, CLIENT_SECRET, env={}), **kwargs)


def authorize(base_url: str, store: TokenStore, merchant: str = "cafe", browser: Browser | None = None,
              **kwargs) -> AuthorizeResult:
    browser = browser or Browser()
    try:
        return run_authorize(base_url=base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, store=store,
                             merchant=merchant, port=0, timeout=kwargs.pop("timeout", 10), announce=browser, **kwargs)
    finally:
        browser.join()


def sandbox_secrets(sb: Sandbox) -> set[str]:
    """Every access token, refresh token and authorization code the sandbox ever issued."""
    return set(sb._tokens) | set(sb._refresh_tokens) | set(sb._codes)
