"""A faithful fake of the Taptouch API (the contract as modelled: docs/api-model.md): deterministic, with faults.

    from taptouch_sandbox import Sandbox, SandboxConfig, Faults

    sb = Sandbox(SandboxConfig(seed=1, stores=3, days=30, end_date=date(2026, 11, 27)), faults=Faults())
    httpx.Client(base_url="https://api.taptouch.net", transport=sb.transport())   # in-process
    with sb.serve() as url: ...                                                   # real HTTP

Data, faults, helpers and several clients behind one server: docs/sandbox.md.
"""

from .app import MALFORMED_KINDS, OrdersPage, Sandbox
from .config import ALL_SCOPES, Faults, SandboxConfig, Stats
from .group import SandboxGroup

__all__ = ["ALL_SCOPES", "MALFORMED_KINDS", "Faults", "OrdersPage", "Sandbox", "SandboxConfig", "SandboxGroup", "Stats"]
