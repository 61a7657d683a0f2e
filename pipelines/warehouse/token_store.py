"""OAuth tokens shared by every process of a deployment, in Postgres (``taptouch_auth.tokens``).

One row per grant (a client-credentials token per base URL, client id and scopes; a merchant's
grant per base URL, client id and merchant label), Fernet-encrypted at rest. A stale
client-credentials token is fetched once, under an advisory lock; a merchant's single-use refresh
token is rotated under a row lock and committed before the lock is released. Implements
:class:`taptouch_resource.tokens.TokenPersistence`; imports no Dagster. Keys, rotation and the one
crash window: docs/authorization.md and docs/security.md.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.errors
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg.rows import DictRow, dict_row

from pipelines.warehouse.urls import redacted_error
from taptouch_resource.auth import (
    ACCESS_LIFETIME_RANGE,
    REFRESH_LIFETIME_RANGE,
    ReauthorizationRequired,
    parse_lifetime,
    reauthorize_command,
)
from taptouch_resource.errors import TaptouchConfigError, TaptouchError, storable_text
from taptouch_resource.tokens import (
    REFRESH_LIFETIME,
    GrantKey,
    StoredAccess,
    TokenResponse,
    TokenStoreError,
    refresh_margin,
)

log = logging.getLogger(__name__)

ENV_TOKEN_KEY = "TAPTOUCH_TOKEN_KEY"
KEEPALIVE_MIN_REMAINING = 3 * 86400.0  # the keep-alive rotates refresh tokens with less than this left
_COLUMNS = (
    "token_id, base_url, client_id, grant_type, label, scopes, access_token, access_issued_at, "
    "access_expires_at, refresh_token, refresh_expires_at, store_ids, rotations, last_error, "
    "authorized_at, updated_at"
)


# -------------------------------------------------------------------------------------------- keys
def derive_key(client_id: str, client_secret: str) -> bytes:
    """A Fernet key derived from the client secret (HKDF-SHA256, bound to the client id)."""
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"taptouch-sync token store", info=b"fernet-v1:" + client_id.encode()
    )
    return base64.urlsafe_b64encode(hkdf.derive(client_secret.encode()))


class TokenCipher:
    """Encrypts tokens for the store. ``repr`` shows no key."""

    def __init__(self, keys: Sequence[bytes | str], *, source: str):
        try:
            self._fernet = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError):
            raise TaptouchConfigError(
                f"{ENV_TOKEN_KEY} must be a Fernet key (32 url-safe base64-encoded bytes), or several "
                f'separated by commas. Make one with: python -c "from cryptography.fernet import Fernet; '
                f'print(Fernet.generate_key().decode())"'
            ) from None
        self.source = source

    def __repr__(self) -> str:
        return f"TokenCipher(source={self.source!r})"

    @classmethod
    def from_env(cls, client_id: str, client_secret: str, env: Mapping[str, str] | None = None) -> TokenCipher:
        """``TAPTOUCH_TOKEN_KEY`` when set, else a key derived from the client secret."""
        env = os.environ if env is None else env
        configured = (env.get(ENV_TOKEN_KEY) or "").strip()
        if configured:
            return cls([k.strip() for k in configured.split(",") if k.strip()], source=ENV_TOKEN_KEY)
        return cls([derive_key(client_id, client_secret)], source="derived from the client secret")

    def encrypt(self, token: str) -> bytes:
        return self._fernet.encrypt(token.encode())

    def decrypt(self, blob: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(blob)).decode()
        except InvalidToken:
            raise TokenStoreError(
                f"A stored token cannot be decrypted with the current key ({self.source}): "
                f"{ENV_TOKEN_KEY} or the client secret changed since it was stored. Restore the old key "
                f"(list it after the new one in {ENV_TOKEN_KEY}), or authorize again."
            ) from None


# -------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class StoredGrant:
    """What ``taptouch-sync tokens`` shows of a row: everything but the tokens."""

    token_id: int
    base_url: str
    client_id: str
    grant_type: str
    label: str
    scopes: tuple[str, ...]
    store_ids: tuple[int, ...]
    access_expires_at: datetime
    refresh_expires_at: datetime | None
    has_refresh_token: bool
    rotations: int
    last_error: str | None
    authorized_at: datetime
    updated_at: datetime


_MAX_TS = datetime(9999, 1, 1, tzinfo=UTC).timestamp()


def _ts(seconds: float) -> datetime:
    """A timestamp the store can hold: anything beyond year 9999 (or not finite) is a bug upstream,
    never a crash here (``year 33715 is out of range`` once cost a merchant their grant)."""
    if not math.isfinite(seconds):
        seconds = 0.0
    return datetime.fromtimestamp(min(max(seconds, 0.0), _MAX_TS), UTC)


def _lifetimes(answer: TokenResponse) -> tuple[float, float]:
    """(access, refresh) lifetimes of ``answer``, clamped to the documented ranges whoever built
    it (:func:`~taptouch_resource.auth.parse_lifetime`)."""
    access = parse_lifetime(answer.lifetime, ACCESS_LIFETIME_RANGE, "expires_in")
    refresh = parse_lifetime(
        answer.refresh_lifetime if answer.refresh_lifetime is not None else REFRESH_LIFETIME,
        REFRESH_LIFETIME_RANGE,
        "refresh_token_expires_in",
    )
    return access, refresh


# -------------------------------------------------------------------------------------------- store
class TokenStore:
    """Tokens in ``taptouch_auth.tokens`` (migration 0003). One short connection per operation.

    ``clock`` (wall-clock seconds) decides freshness; ``before_commit(key)`` runs after the token
    endpoint answered a refresh and before the new pair is committed (tests simulate a crash there).
    """

    def __init__(
        self,
        database_url: str,
        *,
        cipher: TokenCipher,
        clock: Callable[[], float] = time.time,
        lock_timeout: float = 120.0,
        connect_timeout: int = 10,
        before_commit: Callable[[GrantKey], None] | None = None,
        account: str | None = None,
    ):
        scheme, sep, rest = database_url.partition("://")
        if not sep:
            raise TaptouchConfigError("The token store needs a postgresql:// URL.")
        self._url = f"postgresql://{rest}" if scheme in ("postgres", "postgresql+psycopg") else database_url
        self.cipher = cipher
        self._clock = clock
        self._lock_timeout_ms = int(lock_timeout * 1000)
        self._connect_timeout = connect_timeout
        self._before_commit = before_commit
        self.account = account  # a named account of TAPTOUCH_ACCOUNTS: its errors name `authorize --account`

    def __repr__(self) -> str:
        return f"TokenStore(cipher={self.cipher!r})"

    @classmethod
    def for_client(cls, database_url: str, client_id: str, client_secret: str, **kwargs: Any) -> TokenStore:
        return cls(database_url, cipher=TokenCipher.from_env(client_id, client_secret), **kwargs)

    @classmethod
    def for_resource(cls, taptouch: Any, database_url: str, **kwargs: Any) -> TokenStore:
        """The store for a ``TaptouchResource``'s credentials (its key derives from them)."""
        client_id, secret, _ = taptouch.resolved()
        return cls.for_client(database_url, client_id, secret, **kwargs)

    @property
    def identity(self) -> str:
        """Which database: stores with the same identity share tokens (see ``shared_auth``)."""
        return hashlib.sha256(self._url.encode()).hexdigest()

    def _connect(self) -> psycopg.Connection[DictRow]:
        try:
            conn = psycopg.connect(self._url, connect_timeout=self._connect_timeout, row_factory=dict_row)
        except psycopg.Error as exc:  # libpq may quote the password (``invalid percent-encoded token``)
            error = redacted_error(exc, self._url)
        else:
            return self._configure(conn)
        raise error

    def _configure(self, conn: psycopg.Connection[DictRow]) -> psycopg.Connection[DictRow]:
        conn.execute("select set_config('lock_timeout', %s, false)", (f"{self._lock_timeout_ms}ms",))
        # A rotation holds its transaction open while Taptouch answers (retries and Retry-After
        # included): a server-wide idle/transaction timeout ending the session there would lose the
        # rotated refresh token after Taptouch spent the old one. This session is exempt.
        conn.execute("select set_config('idle_in_transaction_session_timeout', '0', false)")
        if conn.info.server_version >= 170000:
            conn.execute("select set_config('transaction_timeout', '0', false)")
        conn.commit()
        return conn

    # ---------------------------------------------------------------- reading
    def _row(self, conn: psycopg.Connection[DictRow], key: GrantKey, *, lock: bool = False) -> DictRow | None:
        query = (
            f"select {_COLUMNS} from taptouch_auth.tokens where base_url = %s and client_id = %s "
            f"and grant_type = %s and label = %s" + (" for update" if lock else "")
        )
        return conn.execute(query, (key.base_url, key.client_id, key.grant_type, key.label)).fetchone()

    def _fresh(self, row: dict) -> bool:
        expires, issued = row["access_expires_at"].timestamp(), row["access_issued_at"].timestamp()
        if expires <= issued:  # marked refused or stale (invalidate_access, _keep_rotated): stale on every
            return False  # clock, also one behind the clock of the host that issued it
        return self._clock() < expires - refresh_margin(expires - issued)

    def _access(self, row: dict) -> StoredAccess:
        expires, issued = row["access_expires_at"].timestamp(), row["access_issued_at"].timestamp()
        return StoredAccess(self.cipher.decrypt(row["access_token"]), expires, expires - issued, tuple(row["scopes"]))

    def grants(self, *, base_url: str | None = None, client_id: str | None = None) -> list[StoredGrant]:
        """Every stored grant (no tokens), merchants first."""
        with self._connect() as conn:
            rows = conn.execute(
                f"select {_COLUMNS} from taptouch_auth.tokens where (%s::text is null or base_url = %s) "
                f"and (%s::text is null or client_id = %s) order by grant_type, base_url, client_id, label",
                (base_url, base_url, client_id, client_id),
            ).fetchall()
        return [
            StoredGrant(
                r["token_id"],
                r["base_url"],
                r["client_id"],
                r["grant_type"],
                r["label"],
                tuple(r["scopes"]),
                tuple(r["store_ids"]),
                r["access_expires_at"],
                r["refresh_expires_at"],
                r["refresh_token"] is not None,
                r["rotations"],
                r["last_error"],
                r["authorized_at"],
                r["updated_at"],
            )
            for r in rows
        ]

    # ---------------------------------------------------------------- writing
    def _upsert(
        self,
        conn: psycopg.Connection[DictRow],
        key: GrantKey,
        answer: TokenResponse,
        issued: float,
        *,
        store_ids: Sequence[int] | None = None,
        authorized: bool = False,
    ) -> None:
        access_lifetime, refresh_lifetime = _lifetimes(answer)
        refresh_enc = self.cipher.encrypt(answer.refresh_token) if answer.refresh_token else None
        refresh_expires = _ts(issued + refresh_lifetime) if answer.refresh_token else None
        conn.execute(
            """
            insert into taptouch_auth.tokens as t (base_url, client_id, grant_type, label, scopes, access_token,
                access_issued_at, access_expires_at, refresh_token, refresh_expires_at, store_ids, authorized_at,
                updated_at)
            values (%(base_url)s, %(client_id)s, %(grant_type)s, %(label)s, %(scopes)s, %(access)s, %(issued)s,
                    %(expires)s, %(refresh)s, %(refresh_expires)s, coalesce(%(store_ids)s, '{}'::bigint[]),
                    %(now)s, %(now)s)
            on conflict (base_url, client_id, grant_type, label) do update set
                scopes = excluded.scopes, access_token = excluded.access_token,
                access_issued_at = excluded.access_issued_at, access_expires_at = excluded.access_expires_at,
                refresh_token = coalesce(excluded.refresh_token, case when %(authorized)s then null
                                                                      else t.refresh_token end),
                refresh_expires_at = case when excluded.refresh_token is not null then excluded.refresh_expires_at
                                          when %(authorized)s then null else t.refresh_expires_at end,
                store_ids = coalesce(%(store_ids)s, t.store_ids),
                rotations = case when %(authorized)s then 0 else t.rotations + 1 end,
                authorized_at = case when %(authorized)s then excluded.authorized_at else t.authorized_at end,
                last_error = null, updated_at = excluded.updated_at
            """,
            {
                "base_url": key.base_url,
                "client_id": key.client_id,
                "grant_type": key.grant_type,
                "label": key.label,
                "scopes": list(answer.scopes),
                "access": self.cipher.encrypt(answer.access_token),
                "issued": _ts(issued),
                "expires": _ts(issued + access_lifetime),
                "refresh": refresh_enc,
                "refresh_expires": refresh_expires,
                "store_ids": list(store_ids) if store_ids is not None else None,
                "now": _ts(self._clock()),
                "authorized": authorized,
            },
        )

    def save_authorization(
        self, key: GrantKey, answer: TokenResponse, *, issued: float, store_ids: Sequence[int] = ()
    ) -> None:
        """Store a merchant's new grant (the code exchange's answer), replacing an older one."""
        if not answer.refresh_token:
            raise TaptouchError("The code exchange returned no refresh_token: the grant could not be kept alive.")
        with self._connect() as conn:
            self._upsert(conn, key, answer, issued, store_ids=store_ids, authorized=True)
        log.info("Stored the authorization of merchant %s", key.label)

    def set_store_ids(self, key: GrantKey, store_ids: Sequence[int]) -> None:
        with self._connect() as conn:
            conn.execute(
                "update taptouch_auth.tokens set store_ids = %s where base_url = %s and client_id = %s "
                "and grant_type = %s and label = %s",
                (list(store_ids), key.base_url, key.client_id, key.grant_type, key.label),
            )

    def forget(self, key: GrantKey) -> bool:
        with self._connect() as conn:
            cur = conn.execute(
                "delete from taptouch_auth.tokens where base_url = %s and client_id = %s "
                "and grant_type = %s and label = %s",
                (key.base_url, key.client_id, key.grant_type, key.label),
            )
            return cur.rowcount > 0

    def invalidate_access(self, key: GrantKey, access_token: str) -> None:
        """Mark the stored access token expired (Taptouch refused it), unless it was already replaced."""
        try:
            self._invalidate_access(key, access_token)
        except psycopg.Error as exc:  # the caller still drops its own copy; the store re-checks expiry
            log.warning("Could not mark the refused access token in the token store (%s)", type(exc).__name__)

    def _invalidate_access(self, key: GrantKey, access_token: str) -> None:
        with self._connect() as conn:
            row = self._row(conn, key, lock=True)
            if row is None:
                return
            try:
                stored = self.cipher.decrypt(row["access_token"])
            except TokenStoreError:
                stored = None
            if stored == access_token:
                conn.execute(
                    "update taptouch_auth.tokens set access_expires_at = access_issued_at, updated_at = %s "
                    "where token_id = %s",
                    (_ts(self._clock()), row["token_id"]),
                )

    # ---------------------------------------------------------------- client credentials
    def client_credentials(self, key: GrantKey, *, fetch: Callable[[], TokenResponse]) -> StoredAccess:
        """The stored token while fresh; else one process fetches (advisory lock), the others reuse it.

        A database failure is :class:`TokenStoreError` (the caller may fall back to its own fetch)."""
        try:
            return self._client_credentials(key, fetch)
        except psycopg.Error as exc:
            hint = " Run: taptouch-sync migrate" if isinstance(exc, psycopg.errors.UndefinedTable) else ""
            raise TokenStoreError(f"The token store is unavailable ({type(exc).__name__}).{hint}") from None

    def _client_credentials(self, key: GrantKey, fetch: Callable[[], TokenResponse]) -> StoredAccess:
        unreadable: list[bytes] = []  # stored tokens this key could not open (said once, not per read)
        with self._connect() as conn:
            row = self._row(conn, key)
            if row is not None and self._fresh(row) and (access := self._decrypt_or_none(row, key, unreadable)):
                return access
            conn.execute("select pg_advisory_xact_lock(%s)", (key.lock_id(),))
            row = self._row(conn, key)  # read committed: sees what a process that held the lock wrote
            if row is not None and self._fresh(row) and (access := self._decrypt_or_none(row, key, unreadable)):
                log.debug("Reusing the client-credentials token another process fetched")
                return access
            issued = self._clock()
            answer = fetch()
            self._upsert(conn, key, answer, issued)
            conn.commit()
            log.info("Fetched a client-credentials token for client %s and stored it", key.client_id)
            lifetime = _lifetimes(answer)[0]
            return StoredAccess(answer.access_token, issued + lifetime, lifetime, answer.scopes)

    def _decrypt_or_none(self, row: dict, key: GrantKey, unreadable: list[bytes]) -> StoredAccess | None:
        """The stored client-credentials token, or None when this key cannot open it. That token is
        cheap to replace, so nothing needs restoring: one INFO line per token says which setting
        differs from the one that stored it (a wrong secret then fails at the token endpoint)."""
        try:
            return self._access(row)
        except TokenStoreError:
            blob = bytes(row["access_token"])
            if blob not in unreadable:
                unreadable.append(blob)
                changed = (
                    "the client secret differs from the one that stored it"
                    if self.cipher.source != ENV_TOKEN_KEY
                    else f"{ENV_TOKEN_KEY} no longer holds its key"
                )
                log.info(
                    "The stored client-credentials token of client %s was sealed with another key (%s): "
                    "fetching a new one",
                    key.client_id,
                    changed,
                )
            return None

    # ---------------------------------------------------------------- merchant grants
    def merchant_access(self, key: GrantKey, *, refresh: Callable[[str], TokenResponse]) -> StoredAccess:
        """The merchant's access token; refreshed (rotating the refresh token) when stale."""
        return self._rotate(key, refresh, lambda row: not self._fresh(row))

    def keep_alive(
        self, key: GrantKey, *, refresh: Callable[[str], TokenResponse], min_remaining: float = KEEPALIVE_MIN_REMAINING
    ) -> bool:
        """Refresh when the refresh token has less than ``min_remaining`` seconds left (or the access
        token is stale). True when this call rotated the tokens. A grant without a usable refresh
        token raises :class:`ReauthorizationRequired` even while its access token still works."""
        rotated: list[bool] = []

        def stale(row: dict) -> bool:
            left = (row["refresh_expires_at"].timestamp() - self._clock()) if row["refresh_expires_at"] else 0.0
            # no refresh token: the grant is dying (the access token may still work); say so now
            return row["refresh_token"] is None or left < min_remaining or not self._fresh(row)

        self._rotate(key, refresh, stale, rotated=rotated)
        return bool(rotated)

    def _rotate(
        self,
        key: GrantKey,
        refresh: Callable[[str], TokenResponse],
        stale: Callable[[dict], bool],
        *,
        rotated: list[bool] | None = None,
    ) -> StoredAccess:
        with self._connect() as conn:
            row = self._grant_row(conn, key)
            if not stale(row):
                return self._access(row)
            row = self._grant_row(conn, key, lock=True)  # waits while another process refreshes
            if not stale(row):
                log.info("Merchant %s: another process refreshed the token; using it", key.label)
                return self._access(row)
            self._check_refreshable(conn, key, row)
            refresh_token = self.cipher.decrypt(row["refresh_token"])
            issued = self._clock()
            try:
                answer = refresh(refresh_token)
            except ReauthorizationRequired as exc:
                expired = self._expired_message(key, row)
                message = expired or self._command_for_account(str(exc), key)
                self._mark_unusable(conn, row, message)
                conn.commit()
                if message != str(exc):
                    raise ReauthorizationRequired(
                        message, error=exc.error, status=exc.status, description=exc.description
                    ) from exc
                raise
            except TaptouchError as exc:
                rotated_token = getattr(exc, "rotated_refresh_token", None)
                if rotated_token:  # Taptouch rotated the token but the rest of its answer is unusable
                    self._keep_rotated(
                        conn,
                        row,
                        rotated_token,
                        issued,
                        getattr(exc, "rotated_refresh_lifetime", None) or REFRESH_LIFETIME,
                        str(exc),
                    )
                    conn.commit()
                raise
            if self._before_commit is not None:
                self._before_commit(key)
            self._upsert(conn, key, answer, issued)
            conn.commit()  # the new pair is durable before the row lock is released
            if rotated is not None:
                rotated.append(True)
            lifetime = _lifetimes(answer)[0]
            log.info("Merchant %s: rotated the refresh token; access valid %.0fs", key.label, lifetime)
            return StoredAccess(answer.access_token, issued + lifetime, lifetime, answer.scopes)

    def _reauthorize(self, key: GrantKey) -> str:
        return reauthorize_command(key.label, self.account)

    def _command_for_account(self, message: str, key: GrantKey) -> str:
        """``message`` (the token endpoint's, which knows no account) naming this store's account."""
        return message.replace(reauthorize_command(key.label), self._reauthorize(key)) if self.account else message

    def _check_refreshable(self, conn: psycopg.Connection[DictRow], key: GrantKey, row: DictRow) -> None:
        """ReauthorizationRequired unless the locked grant ``row`` holds a refresh token. One this
        machine's clock says has expired is presented all the same: only Taptouch's
        ``invalid_grant`` drops it (a clock that jumped ahead must not destroy a grant Taptouch
        still honours); :meth:`_expired_message` then says why."""
        if row["refresh_token"] is None:
            raise ReauthorizationRequired(
                f"Merchant {key.label!r} must authorize again ({row['last_error'] or 'no refresh token is stored'}). "
                f"Run: {self._reauthorize(key)}",
                error="invalid_grant",
            )

    def _expired_message(self, key: GrantKey, row: DictRow) -> str | None:
        """Why Taptouch refused the grant's refresh token when it had expired by this machine's clock."""
        if row["refresh_expires_at"] is None or self._clock() < row["refresh_expires_at"].timestamp():
            return None
        return (
            f"The refresh token of merchant {key.label!r} expired at "
            f"{row['refresh_expires_at']:%Y-%m-%d %H:%M} UTC (4 days without a refresh; is the "
            f"merchant_tokens_keepalive schedule on?). Run: {self._reauthorize(key)}"
        )

    def _grant_row(self, conn: psycopg.Connection[DictRow], key: GrantKey, *, lock: bool = False) -> DictRow:
        """The merchant's stored grant; none stored (or revoked meanwhile) must be authorized again."""
        row = self._row(conn, key, lock=lock)
        if row is None:
            raise ReauthorizationRequired(
                f"No authorization of merchant {key.label!r} is stored for client {key.client_id!r} at "
                f"{key.base_url}. Run: {self._reauthorize(key)}",
                error="no_grant",
            )
        return row

    def _keep_rotated(
        self,
        conn: psycopg.Connection[DictRow],
        row: dict,
        refresh_token: str,
        issued: float,
        lifetime: float,
        message: str,
    ) -> None:
        """Store a refresh token from an answer that was otherwise unusable: the old one is spent at
        Taptouch, this one keeps the grant alive. The access token is marked stale."""
        lifetime = parse_lifetime(lifetime, REFRESH_LIFETIME_RANGE, "refresh_token_expires_in")
        conn.execute(
            "update taptouch_auth.tokens set refresh_token = %s, refresh_expires_at = %s, "
            "access_expires_at = access_issued_at, rotations = rotations + 1, last_error = %s, "
            "updated_at = %s where token_id = %s",
            (
                self.cipher.encrypt(refresh_token),
                _ts(issued + lifetime),
                storable_text(message[:1000]),
                _ts(self._clock()),
                row["token_id"],
            ),
        )
        log.warning("Merchant %s: kept the rotated refresh token of an unusable answer (%s)", row["label"], message)

    def _mark_unusable(self, conn: psycopg.Connection[DictRow], row: dict, message: str) -> None:
        """Drop the dead refresh token; a still-valid access token stays usable until it expires."""
        conn.execute(
            "update taptouch_auth.tokens set refresh_token = null, last_error = %s, updated_at = %s "
            "where token_id = %s",
            (storable_text(message[:1000]), _ts(self._clock()), row["token_id"]),
        )
