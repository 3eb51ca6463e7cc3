"""The ledger's and the cache's direct Redis calls (ledger/redis_direct.py): what the client's
layers gave them, kept without the layers, and the commands pipelined on one connection per
event loop. Each test has a redis-server of its own."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
import redis
import uvloop
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ledger.redis_direct import DirectCommands, _Pipe, pack
from tests.test_cache_redis_outage import ThrowawayRedis, own_redis

__all__ = ["own_redis"]

SCRIPT = "return {KEYS[1], ARGV[1]}"


def direct(url: str, retries: int = 0, stale_after_s: float = 5.0) -> DirectCommands:
    pool = ConnectionPool.from_url(url, protocol=2, driver_info=None, socket_timeout=None)
    return DirectCommands(pool, retries=retries, stale_after_s=stale_after_s)


async def clients(server: redis.Redis, expected: int) -> int:
    """The server's connections, less the one asking; polled for a while until `expected`
    (a connection closed here is gone from the server a moment later)."""
    for _ in range(100):
        found = int(server.info("clients")["connected_clients"]) - 1
        if found == expected:
            break
        await asyncio.sleep(0.02)
    return found


async def test_a_reply_is_the_commands_own_after_a_call_cut_mid_reply(
    own_redis: ThrowawayRedis,
) -> None:
    calls = direct(own_redis.url)
    try:
        assert await calls.call("ECHO", "warm") == b"warm"
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # the ECHO below is sent, never answered
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await calls.call("ECHO", "first")
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        # One connection in all: the late "first" must not be read as this command's reply.
        assert await calls.call("ECHO", "second") == b"second"
        assert await calls.call("ECHO", "third") == b"third"
    finally:
        await calls.aclose()


async def test_a_reply_error_is_raised_and_the_connection_kept(own_redis: ThrowawayRedis) -> None:
    calls = direct(own_redis.url)
    server = redis.Redis.from_url(own_redis.url)
    try:
        await calls.call("SET", "k", "not a number")
        with pytest.raises(ResponseError):
            await calls.call("INCR", "k")
        assert await calls.call("GET", "k") == b"not a number"
        assert await clients(server, 1) == 1
    finally:
        await calls.aclose()


async def test_a_script_redis_does_not_have_is_sent_whole_then_by_its_hash(
    own_redis: ThrowawayRedis,
) -> None:
    script = redis.asyncio.Redis().register_script(SCRIPT)
    calls = direct(own_redis.url)
    server = redis.Redis.from_url(own_redis.url)
    try:
        assert server.script_exists(script.sha) == [False]
        assert await calls.script(script, ["key"], ["arg"]) == [b"key", b"arg"]
        assert server.script_exists(script.sha) == [True]  # EVAL loaded it
        server.script_flush()
        assert await calls.script(script, ["key2"], [7]) == [b"key2", b"7"]
    finally:
        await calls.aclose()


async def test_a_connection_dead_with_a_restarted_redis_is_retried_once_when_asked(
    own_redis: ThrowawayRedis,
) -> None:
    once = direct(own_redis.url, retries=1)
    never = direct(own_redis.url, retries=0)
    try:
        assert await once.call("ECHO", "a") == b"a"
        assert await never.call("ECHO", "a") == b"a"
        own_redis.stop()
        own_redis.start()  # same port; both idle connections are dead, not yet noticed
        assert await once.call("ECHO", "b") == b"b"  # failed on the dead one, then retried
        # The loop ran meanwhile: the other's connection was seen closed, a new one is opened.
        assert await never.call("ECHO", "c") == b"c"
        own_redis.stop()
        own_redis.start()
        with pytest.raises(RedisConnectionError):
            await never.call("ECHO", "d")
        assert await never.call("ECHO", "e") == b"e"  # reconnected on its next use
    finally:
        await once.aclose()
        await never.aclose()


async def test_concurrent_commands_share_one_connection_each_reply_its_own(
    own_redis: ThrowawayRedis,
) -> None:
    calls = direct(own_redis.url)
    server = redis.Redis.from_url(own_redis.url)
    try:
        replies = await asyncio.gather(*(calls.call("ECHO", str(i)) for i in range(200)))
        assert replies == [str(i).encode() for i in range(200)]
        assert await clients(server, 1) == 1
        await calls.aclose()
        assert await clients(server, 0) == 0
    finally:
        await calls.aclose()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What each connection's writes carried, one item a write."""
    written: list[bytes] = []
    flush = _Pipe._flush

    def recorded(pipe: _Pipe) -> None:
        if pipe._out:
            written.append(b"".join(pipe._out))
        flush(pipe)

    monkeypatch.setattr(_Pipe, "_flush", recorded)
    return written


async def test_commands_called_together_go_out_in_one_write_and_fail_as_the_first_failure(
    own_redis: ThrowawayRedis, writes: list[bytes]
) -> None:
    calls = direct(own_redis.url)
    try:
        assert await calls.call("SET", "k", "text", "PX", 60_000) == b"OK"
        writes.clear()
        value, left_ms = await calls.calls(("GET", "k"), ("PTTL", "k"))
        assert value == b"text" and 0 < left_ms <= 60_000
        assert writes == [pack("GET", "k") + pack("PTTL", "k")]
        with pytest.raises(ResponseError):
            await calls.calls(("INCR", "k"), ("INCR", "k"), ("GET", "k"))
        assert await calls.call("GET", "k") == b"text"  # the connection kept, in step
    finally:
        await calls.aclose()


async def test_commands_called_in_one_turn_of_the_loop_go_out_in_one_write(
    own_redis: ThrowawayRedis, writes: list[bytes]
) -> None:
    calls = direct(own_redis.url)
    try:
        assert await calls.call("ECHO", "connected") == b"connected"
        writes.clear()
        replies = await asyncio.gather(*(calls.call("ECHO", str(i)) for i in range(20)))
        assert replies == [str(i).encode() for i in range(20)]
        assert writes == [b"".join(pack("ECHO", str(i)) for i in range(20))]
    finally:
        await calls.aclose()


async def test_calls_cut_anywhere_in_the_line_leave_every_other_reply_its_own(
    own_redis: ThrowawayRedis,
) -> None:
    calls = direct(own_redis.url)
    try:
        tasks = [asyncio.create_task(calls.call("ECHO", str(i))) for i in range(60)]
        await asyncio.sleep(0)  # every command in the line
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result == str(i).encode()
        assert await calls.call("ECHO", "after") == b"after"
    finally:
        await calls.aclose()


async def test_a_connection_without_a_reply_for_too_long_is_closed_and_replaced(
    own_redis: ThrowawayRedis,
) -> None:
    calls = direct(own_redis.url, retries=1, stale_after_s=0.3)
    server = redis.Redis.from_url(own_redis.url)
    try:
        assert await calls.call("ECHO", "warm") == b"warm"
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # a hung server: nothing answered
        try:
            waiting = asyncio.create_task(calls.call("ECHO", "lost"))  # no deadline of its own
            await asyncio.sleep(0.4)
            replaced = asyncio.create_task(calls.call("ECHO", "new"))
            with pytest.raises(RedisTimeoutError):  # never retried: Redis may have run it
                async with asyncio.timeout(5):
                    await waiting
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert await replaced == b"new"
        assert await clients(server, 1) == 1  # the hung connection closed
    finally:
        await calls.aclose()


async def test_the_urls_database_and_password_are_used(own_redis: ThrowawayRedis) -> None:
    """The connection is opened by redis-py (AUTH, SELECT): the URL's options hold."""
    server = redis.Redis.from_url(own_redis.url)
    server.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{own_redis.port}/3"
    calls = direct(url)
    try:
        await calls.call("SET", "where", "db3")
        with redis.Redis.from_url(url) as db3:
            assert db3.get("where") == b"db3"
        wrong = direct(f"redis://:wrong@127.0.0.1:{own_redis.port}/3")
        with pytest.raises(redis.exceptions.AuthenticationError):
            await wrong.call("GET", "where")
        await wrong.aclose()
    finally:
        await calls.aclose()


def test_commands_are_pipelined_on_uvloop(own_redis: ThrowawayRedis) -> None:
    """The gateway's loop (uvicorn takes uvloop): the socket changes protocol there too."""

    async def main() -> list[Any]:
        calls = direct(own_redis.url)
        try:
            return await asyncio.gather(*(calls.call("ECHO", str(i)) for i in range(50)))
        finally:
            await calls.aclose()

    assert uvloop.run(main()) == [str(i).encode() for i in range(50)]


ARGUMENT = st.one_of(
    st.text(),
    st.binary(max_size=9000),  # past redis-py's 6,000-byte cut-off, which splits its buffers
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(
    name=st.sampled_from(["EVALSHA", "EVAL", "GET", "SET"]), args=st.lists(ARGUMENT, max_size=12)
)
def test_a_command_is_packed_byte_for_byte_as_redis_py_packs_it(
    name: str, args: list[object]
) -> None:
    connection = ConnectionPool.from_url("redis://127.0.0.1:1/0").make_connection()
    assert pack(name, *args) == b"".join(connection.pack_command(name, *args))


class _Name(str):
    """A str subclass (an enum's value, say): the general path encodes it."""


@given(
    args=st.lists(
        st.one_of(
            st.text(alphabet=st.characters(max_codepoint=127)),
            st.integers(min_value=-(2**70), max_value=2**70),
            st.floats(allow_nan=True, allow_infinity=True),
            st.builds(_Name, st.text(max_size=5)),
        ),
        max_size=24,
    )
)
def test_a_command_of_ascii_text_and_numbers_is_packed_as_redis_py_packs_it(
    args: list[object],
) -> None:
    """The one-str path (every argument ASCII text or a number) and its way out to the
    general one."""
    connection = ConnectionPool.from_url("redis://127.0.0.1:1/0").make_connection()
    assert pack("EVALSHA", *args) == b"".join(connection.pack_command("EVALSHA", *args))


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_an_argument_redis_py_refuses_is_refused(bad: object) -> None:
    connection = ConnectionPool.from_url("redis://127.0.0.1:1/0").make_connection()
    with pytest.raises(DataError):
        connection.pack_command("SET", "key", bad)
    with pytest.raises(DataError):
        pack("SET", "key", bad)
