"""The cache of authenticated keys: a hit costs neither the store nor an HMAC, a revocation in
this process is seen at once, and other processes' changes within the TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from gateway.auth import KeyService
from gateway.errors import AuthenticationFailed, RevokedKey
from gateway.store import Store

T = TypeVar("T")
TTL_S = 5.0


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """How often the store was asked for a key, and how often a key was hashed."""

    def __init__(self) -> None:
        self.find_key = 0
        self.hash = 0


def counted(calls: Calls, name: str, method: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        setattr(calls, name, getattr(calls, name) + 1)
        return method(*args, **kwargs)

    return wrapper


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    store = Store.connect(store_url)
    await store.migrate()
    await store.create_team("search")
    try:
        yield store
    finally:
        await store.aclose()


def spied(
    store: Store, monkeypatch: pytest.MonkeyPatch, clock: Clock, cache_size: int = 100
) -> tuple[KeyService, Calls]:
    keys = KeyService(store, b"secret", cache_ttl_s=TTL_S, cache_size=cache_size, clock=clock)
    calls = Calls()
    find_key: Callable[..., Awaitable[Any]] = store.find_key
    monkeypatch.setattr(store, "find_key", counted(calls, "find_key", find_key))
    monkeypatch.setattr(keys, "hash", counted(calls, "hash", keys.hash))
    return keys, calls


async def test_a_cached_key_is_authenticated_without_the_store_or_an_hmac(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, calls = spied(store, monkeypatch, Clock())
    issued = await keys.issue("search")
    calls.hash = 0  # issuing hashed it once
    first = await keys.authenticate(issued.secret)
    again = [await keys.authenticate(issued.secret) for _ in range(3)]
    assert {k.id for k in (first, *again)} == {issued.key.id}
    assert (calls.find_key, calls.hash) == (1, 1)


async def test_a_key_revoked_in_this_process_is_refused_at_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, _ = spied(store, monkeypatch, Clock())
    issued = await keys.issue("search")
    await keys.authenticate(issued.secret)  # now cached
    await keys.revoke(issued.key.id)
    with pytest.raises(RevokedKey):
        await keys.authenticate(issued.secret)


async def test_another_processs_revocation_is_seen_once_the_ttl_has_passed(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    keys, calls = spied(store, monkeypatch, clock)
    issued = await keys.issue("search")
    await keys.authenticate(issued.secret)
    await store.revoke_key(issued.key.id)  # as another worker or replica would
    clock.now += TTL_S - 0.01
    assert (await keys.authenticate(issued.secret)).id == issued.key.id  # the documented window
    clock.now += 0.02
    with pytest.raises(RevokedKey):
        await keys.authenticate(issued.secret)
    assert calls.find_key == 2


async def test_an_unknown_key_is_never_cached(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys, calls = spied(store, monkeypatch, Clock())
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            await keys.authenticate("rs-guessed")
    assert calls.find_key == 2


async def test_past_its_size_the_cache_forgets_the_oldest_key_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    keys, calls = spied(store, monkeypatch, clock, cache_size=2)
    first, second, third = [await keys.issue("search") for _ in range(3)]
    for issued in (first, second, third):
        await keys.authenticate(issued.secret)
        clock.now += 0.1
    assert calls.find_key == 3
    await keys.authenticate(third.secret)
    await keys.authenticate(second.secret)
    assert calls.find_key == 3  # the two newest are still held
    await keys.authenticate(first.secret)
    assert calls.find_key == 4  # the oldest was dropped to make room


async def test_requests_in_flight_with_an_uncached_key_share_one_store_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When a key's entry lapses under load, each of the requests in flight with it missed the
    # cache at once and read the store itself.
    keys, calls = spied(store, monkeypatch, Clock())
    issued = await keys.issue("search")
    found = await asyncio.gather(*(keys.authenticate(issued.secret) for _ in range(32)))
    assert {k.id for k in found} == {issued.key.id}
    assert calls.find_key == 1
    refused = await asyncio.gather(
        *(keys.authenticate("rs-not-a-key") for _ in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, AuthenticationFailed) for r in refused)
    assert calls.find_key == 2
    assert (await keys.authenticate(issued.secret)).id == issued.key.id  # the cache, as before
    assert calls.find_key == 2
