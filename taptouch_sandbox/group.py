"""Several Taptouch clients behind one sandbox server: what a deployment with several accounts sees.

Each member of a :class:`SandboxGroup` is a whole :class:`Sandbox` (its own client id and secret,
stores, tokens, faults and counters); a token request goes to the member its client id names, an
API request to the member that issued its bearer token. :func:`demo_group` is the demo's pair.
docs/sandbox.md, "Several clients behind one server".
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, unquote

from .app import _AUTHORIZE_PATH, _TOKEN_PATH, Response, Sandbox, _parse_form, _Serving
from .config import Faults, SandboxConfig


class SandboxGroup(_Serving):
    """One server, several clients (each a :class:`Sandbox` with its own store ids and id_space)."""

    def __init__(self, sandboxes: Sequence[Sandbox]):
        if not sandboxes:
            raise ValueError("a SandboxGroup needs at least one Sandbox")
        ids = [sb.config.client_id for sb in sandboxes]
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids must differ, got {ids}")
        spaces = [sb.config.id_space for sb in sandboxes]
        if len(set(spaces)) != len(spaces):
            raise ValueError(f"each member needs its own id_space (order ids are global), got {spaces}")
        seen: set[int] = set()
        for sb in sandboxes:
            stores = set(sb.store_ids())
            if stores & seen:
                raise ValueError(
                    f"store ids must be disjoint (Taptouch ids are global): {sorted(stores & seen)} "
                    f"appear twice; give each member its own store_id_base"
                )
            seen |= stores
        self.members: list[Sandbox] = list(sandboxes)
        self.faults = Faults()  # the server's own (the HTTP handler reads latency): members use theirs

    def __getitem__(self, client_id: str) -> Sandbox:
        for sb in self.members:
            if sb.config.client_id == client_id:
                return sb
        raise KeyError(client_id)

    def __repr__(self) -> str:
        return f"SandboxGroup({', '.join(repr(sb) for sb in self.members)})"

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        member = self._member(path, query, headers, body)
        resp = member.handle(method, path, query, headers, body)
        delay = member.faults.latency + (member.faults.timeout_sleep if resp.stall else 0.0)
        if delay > 0:
            time.sleep(delay)
            resp.stall = False
        return resp

    def _member(self, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Sandbox:
        if _TOKEN_PATH.search(path):
            return self._by_client(_token_client_id(headers, body))
        if _AUTHORIZE_PATH.search(path):
            return self._by_client(parse_qs(query).get("client_id", [""])[-1])
        scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            for sb in self.members:
                with sb._lock:
                    if token in sb._tokens:
                        return sb
        return self.members[0]  # answers 401 invalid_token

    def _by_client(self, client_id: str | None) -> Sandbox:
        with contextlib.suppress(KeyError):
            return self[client_id or ""]
        return self.members[0]  # answers 401 invalid_client


def _token_client_id(headers: Mapping[str, str], body: bytes) -> str | None:
    auth = headers.get("authorization", "") or ""
    if auth[:6].lower() == "basic ":
        try:
            return unquote(base64.b64decode(auth[6:].strip()).decode().partition(":")[0])
        except ValueError:
            return None
    try:
        return _parse_form(headers.get("content-type", ""), body).get("client_id")
    except ValueError:
        return None


# The demo's two accounts (`taptouch-sync demo --accounts`): their own clients, and stores and order
# ids disjoint from each other and from the single-account demo's (7101.., id_space 0), so both
# demos can share one warehouse and each row keeps the account that loaded it.
DEMO_ACCOUNTS = {
    "north": dict(
        seed=3,
        stores=3,
        store_id_base=7201,
        id_space=2,
        client_id="sandbox-north",
        client_secret="sandbox-north-secret",
    ),
    "south": dict(
        seed=2,
        stores=2,
        store_id_base=8101,
        id_space=1,
        client_id="sandbox-south",
        client_secret="sandbox-south-secret",
    ),
}


def demo_group(days: int = 30, **config) -> tuple[SandboxGroup, dict[str, Sandbox]]:
    """The demo's two-account sandbox: ``(group, {"north": Sandbox, "south": Sandbox})``."""
    members = {
        name: Sandbox(SandboxConfig(days=days, **{**fields, **config})) for name, fields in DEMO_ACCOUNTS.items()
    }
    return SandboxGroup(list(members.values())), members
