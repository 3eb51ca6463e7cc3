"""Virtual keys: issued once, stored as a keyed hash, checked in constant time."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import AuthenticationFailed, RevokedKey
from gateway.outage import store_outage_as_503
from gateway.settings import ConfigError, Settings
from gateway.store import ApiKey, Store, sqlite_path
from ledger.single_flight import SingleFlight

KEY_PREFIX = "rs-"
KEY_CACHE_TTL_S = 5.0  # how long another worker or replica may still accept a revoked key
KEY_CACHE_SIZE = 10_000  # keys authenticated within the TTL; the oldest goes first past it


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly created key: the only time its secret is known."""

    key: ApiKey
    secret: str


def load_key_secret(settings: Settings, environ: Mapping[str, str]) -> bytes:
    """The HMAC secret keys are hashed with: from the environment, else a file beside SQLite."""
    value = environ.get(settings.auth.key_secret_env)
    if value:
        return value.encode()
    path = sqlite_path(settings.store_url())
    if path is None:
        raise ConfigError(
            f"auth.key_secret_env: set {settings.auth.key_secret_env} to the same secret on every "
            "replica (keys are stored as HMACs keyed with it)"
        )
    secret_file = path.with_name(path.name + ".key-secret")
    if not secret_file.exists():
        secret_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return Path(secret_file).read_text().strip().encode()


class KeyService:
    """Issues, revokes and authenticates virtual keys."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        *,
        cache_ttl_s: float = KEY_CACHE_TTL_S,
        cache_size: int = KEY_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._secret = secret
        self._ttl_s = cache_ttl_s
        self._size = cache_size
        self._clock = clock
        # Keys authenticated in the last few seconds, by the presented secret itself, so that a
        # hit is one dict lookup: no HMAC (0.05 ms) and no store read per request. The secret
        # is in this process's memory while the request is anyway; the cache holds it no
        # longer than the TTL, only for keys that authenticated (a guessed key is never
        # cached), and str hashing is keyed per process, so the lookup leaks nothing a caller
        # can time. Revocations in this process drop the entry at once, other workers and
        # replicas within the TTL.
        self._cache: dict[str, tuple[float, ApiKey]] = {}
        # Store reads in flight, by secret: when a key's entry lapses under load, the requests
        # in flight with it wait on one read instead of making one each (32 at 32 in flight).
        self._finding: SingleFlight[str, ApiKey] = SingleFlight()

    def hash(self, secret_key: str) -> str:
        return hmac.new(self._secret, secret_key.encode(), hashlib.sha256).hexdigest()

    async def issue(
        self,
        team: str,
        name: str | None = None,
        allowed_models: Sequence[str] | None = None,
        latency_class: str | None = None,
    ) -> IssuedKey:
        secret_key = KEY_PREFIX + secrets.token_urlsafe(32)
        key = await self._store.create_key(
            key_id="key_" + secrets.token_hex(8),
            team=team,
            key_hash=self.hash(secret_key),
            key_hint=secret_key[:7] + "…",
            name=name,
            allowed_models=allowed_models,
            latency_class=latency_class,
        )
        return IssuedKey(key=key, secret=secret_key)

    async def revoke(self, key_id: str) -> ApiKey:
        key = await self._store.revoke_key(key_id)
        self._cache = {s: v for s, v in self._cache.items() if v[1].id != key_id}
        return key

    def forget(self, *, key_id: str | None = None, team: str | None = None) -> None:
        """Drop cached keys (one, or a team's) whose stored defaults changed: this process reads
        them again at once, other workers within the cache's time to live."""
        self._cache = {
            s: v
            for s, v in self._cache.items()
            if v[1].id != key_id and (team is None or v[1].team != team)
        }

    async def authenticate(self, secret_key: str | None) -> ApiKey:
        if not secret_key:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        now = self._clock()
        cached = self._cache.get(secret_key)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key = await self._finding.run(secret_key, functools.partial(self._find, secret_key))
            self._remember(secret_key, key, now)
        if key.revoked_at is not None:
            raise RevokedKey(key.id, key.team)
        return key

    async def _find(self, secret_key: str) -> ApiKey:
        digest = self.hash(secret_key)
        # The store down: 503 (try again), not 500 and not 401 (the key may be fine).
        with store_outage_as_503():
            found = await self._store.find_key(digest)
        if found is None or not hmac.compare_digest(found[1], digest):
            raise AuthenticationFailed("Incorrect API key provided")
        return found[0]

    def _remember(self, secret_key: str, key: ApiKey, now: float) -> None:
        self._cache.pop(secret_key, None)  # re-inserted last: the dict stays oldest-first
        while len(self._cache) >= self._size:
            del self._cache[next(iter(self._cache))]
        self._cache[secret_key] = (now + self._ttl_s, key)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer` (OpenAI SDK) or `x-api-key` (Anthropic SDK)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return headers.get("x-api-key") or None


def check_master_key(expected: str | None, presented: str | None, env_name: str) -> None:
    if not expected:
        raise AuthenticationFailed(
            f"The admin API is disabled: set {env_name}", code="admin_disabled"
        )
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AuthenticationFailed("Incorrect master key", code="invalid_master_key")
