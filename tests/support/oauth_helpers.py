"""Helpers for the merchant-authorization tests: a test client playing the merchant's browser."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx

from pipelines.authorize import AuthorizeResult, run_authorize
from pipelines.warehouse.token_store import TokenCipher, TokenStore
from taptouch_sandbox import Sandbox

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


def authorize(
    base_url: str, store: TokenStore, merchant: str = "cafe", browser: Browser | None = None, **kwargs
) -> AuthorizeResult:
    browser = browser or Browser()
    try:
        return run_authorize(
            base_url=base_url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            store=store,
            merchant=merchant,
            port=0,
            timeout=kwargs.pop("timeout", 10),
            announce=browser,
            **kwargs,
        )
    finally:
        browser.join()


def sandbox_secrets(sb: Sandbox) -> set[str]:
    """Every access token, refresh token and authorization code the sandbox ever issued."""
    return set(sb._tokens) | set(sb._refresh_tokens) | set(sb._codes)


def run_authorize_command(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Browser]:
    """``taptouch-sync authorize ARGS`` in its own process (loopback callback on any port, no
    browser, 30 s timeout), with a :class:`Browser` following the URL it prints as the merchant."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "authorize", *args, "--port", "0", "--no-browser", "--timeout", "30"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    browser = Browser()
    try:
        for line in proc.stdout:
            browser(line)
            if browser.threads:
                break
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    browser.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), browser
