"""Taptouch accounts of this deployment, from ``TAPTOUCH_ACCOUNTS`` (read when the definitions load).

Unset (or empty): one account, :data:`DEFAULT`, whose names carry no prefix (``stores``,
``orders_hourly``, pool ``taptouch_api``, resource ``taptouch``) and whose rows say
``account = 'default'``. ``TAPTOUCH_ACCOUNTS=north,south``: one :class:`Account` per name, each
prefixing its asset keys, pool, resource, jobs and schedules, with its own ``TAPTOUCH_<NAME>_*``
credentials. What an account owns and shares: docs/operating.md, "Several accounts".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .warehouse.ownership import UNNAMED

if TYPE_CHECKING:  # dagster is imported when a key is made, not when the accounts are read
    import dagster as dg

ACCOUNTS_ENV = "TAPTOUCH_ACCOUNTS"
DEFAULT_NAME = UNNAMED  # the unnamed account's rows (warehouse.ownership)
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
MAX_NAME = 40


@dataclass(frozen=True)
class Account:
    """One Taptouch client (OAuth client id) of the deployment and the names of its definitions."""

    name: str
    is_default: bool = False  # True only for the single-account setup (DEFAULT): names without a prefix

    # ---- Dagster names
    def key(self, asset: str) -> dg.AssetKey:
        """The asset key of ``asset`` (``orders`` -> ``north/orders``)."""
        import dagster as dg

        return dg.AssetKey([asset] if self.is_default else [self.name, asset])

    def key_string(self, asset: str) -> str:
        return asset if self.is_default else f"{self.name}/{asset}"

    def op_name(self, asset: str) -> str:
        """The op of ``asset`` in run config (``ops: {north__orders: ...}``)."""
        return asset if self.is_default else f"{self.name}__{asset}"

    def named(self, thing: str) -> str:
        """A job, schedule, sensor or group name (``orders_hourly`` -> ``north_orders_hourly``)."""
        return thing if self.is_default else f"{self.name}_{thing}"

    @property
    def pool(self) -> str:
        return "taptouch_api" if self.is_default else f"taptouch_api_{self.name}"

    @property
    def resource_key(self) -> str:
        return "taptouch" if self.is_default else f"taptouch_{self.name}"

    @property
    def group(self) -> str:
        return "taptouch" if self.is_default else f"taptouch_{self.name}"

    # ---- settings
    def env(self, setting: str) -> str:
        """The variable of ``setting`` (``CLIENT_ID`` -> ``TAPTOUCH_NORTH_CLIENT_ID``)."""
        return f"TAPTOUCH_{setting}" if self.is_default else f"TAPTOUCH_{self.name.upper()}_{setting}"

    def resource(self):
        """The account's ``TaptouchResource``: credentials bound with ``dg.EnvVar`` (read when a run
        starts; a run without them fails before its first step, naming the variable)."""
        import dagster as dg

        from taptouch_resource import TaptouchResource

        return TaptouchResource(
            client_id=dg.EnvVar(self.env("CLIENT_ID")), client_secret=dg.EnvVar(self.env("CLIENT_SECRET"))
        )


DEFAULT = Account(DEFAULT_NAME, is_default=True)


def parse(raw: str | None) -> list[Account]:
    """The accounts named by ``raw`` (a ``TAPTOUCH_ACCOUNTS`` value); ``[DEFAULT]`` when empty."""
    names = [part.strip() for part in (raw or "").split(",")]
    names = [n for n in names if n]
    if not names:
        return [DEFAULT]
    seen: set[str] = set()
    for name in names:
        if not _NAME.match(name) or len(name) > MAX_NAME:
            raise ValueError(
                f"{ACCOUNTS_ENV}: {name!r} is not a valid account name: use lowercase letters, digits and _, "
                f"starting with a letter, at most {MAX_NAME} characters (e.g. TAPTOUCH_ACCOUNTS=north,south)"
            )
        if name == DEFAULT_NAME:
            raise ValueError(
                f"{ACCOUNTS_ENV}: 'default' is reserved for the single-account setup "
                f"(TAPTOUCH_ACCOUNTS unset); give the account another name"
            )
        if name in seen:
            raise ValueError(f"{ACCOUNTS_ENV}: account {name!r} is named twice")
        seen.add(name)
    return [Account(n) for n in names]


def configured() -> list[Account]:
    """The accounts of ``TAPTOUCH_ACCOUNTS`` (read when the definitions load)."""
    return parse(os.environ.get(ACCOUNTS_ENV))
