"""The load generator of benchmarks/gateway_bench.py: a cheap HTTP/1.1 keep-alive client.

It runs in a process of its own (so that the generator never shares an interpreter with what it
measures) on a raw asyncio protocol rather than an HTTP library, whose own per-request cost
(httpx: about 1 ms) would otherwise sit inside every figure. Two ways to load a server:

- closed loop: N connections, each sending its next request when the previous answer arrived;
- open loop: requests sent on a fixed schedule (`rate` per second) whatever the replies, and
  timed from the *scheduled* send, so that a server that stalls is charged for every request it
  held up (no coordinated omission). Each request in flight takes an idle connection or opens
  one, as independent clients would.

    python benchmarks/loadgen.py SPEC_JSON OUT_FILE    writes one LoadResult as JSON
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson


@dataclass(frozen=True)
class LoadSpec:
    """One cell of the benchmark: where to send what, and how hard."""

    port: int
    path: str
    body: dict[str, Any]
    mode: Literal["closed", "open"]
    duration_s: float
    headers: dict[str, str] = field(default_factory=dict)
    concurrency: int = 1  # closed loop
    rate: float = 0.0  # open loop, requests per second
    unique_prompts: bool = False  # a new prompt text on every request (no cache can help)
    warmup_s: float = 0.5  # connections opened and used before timing starts
    drain_s: float = 5.0  # after the last send, how long answers are awaited
    max_connections: int = 512  # open loop: past this, a request waits for a free connection


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # answered 200, in send order
    errors: Counter[str] = field(default_factory=Counter)  # "http 429", "connection", ...
    cache: Counter[str] = field(default_factory=Counter)  # x-rightsize-cache values of 200s
    window_s: float = 0.0  # the measured window: throughput = len(latencies_ms) / window_s
    send_lag_ms: list[float] = field(default_factory=list)  # open loop: actual - scheduled send
    connections: int = 0  # opened while timing

    def to_json(self) -> bytes:
        # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting them.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return orjson.dumps({**fields, "errors": dict(self.errors), "cache": dict(self.cache)})

    @classmethod
    def from_json(cls, raw: bytes | str) -> LoadResult:
        data = orjson.loads(raw)
        data["errors"] = Counter(data["errors"])
        data["cache"] = Counter(data["cache"])
        return cls(**data)


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    cache: str | None
    close: bool


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._reply: asyncio.Future[_Reply] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._reply is None or self._reply.done():
            return
        parsed = parse_response(self._buffer)
        if parsed is not None:
            reply, consumed = parsed
            del self._buffer[:consumed]
            self._reply.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    def send(self, payload: bytes) -> asyncio.Future[_Reply]:
        assert self.transport is not None
        self._reply = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._reply

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def parse_response(buffer: bytearray | bytes) -> tuple[_Reply, int] | None:
    """The first complete response in buffer and its length in bytes; None while incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, cache, close = 0, False, None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"x-rightsize-cache":
            cache = value.decode()
        elif name == b"connection":
            close = value.lower() == b"close"
    start = end + 4
    consumed = _chunked_end(buffer, start) if chunked else start + length
    if consumed is None or len(buffer) < consumed:
        return None
    return _Reply(status, cache, close), consumed


def _chunked_end(buffer: bytearray | bytes, pos: int) -> int | None:
    """Where a chunked body starting at pos ends (trailers included), None while incomplete."""
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        if size == 0:  # the last chunk, then trailers (usually none) and an empty line
            end = buffer.find(b"\r\n\r\n", line_end)
            return None if end < 0 else end + 4
        pos = line_end + 2 + size + 2
        if len(buffer) < pos:
            return None


class _Requests:
    """The wire bytes of each request: the same body, or a new prompt text every time."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        head = [f"POST {spec.path} HTTP/1.1", f"host: 127.0.0.1:{spec.port}"]
        head += [f"{name}: {value}" for name, value in spec.headers.items()]
        head += ["content-type: application/json", "content-length: "]
        self._head = "\r\n".join(head).encode()
        self._fixed = self._frame(orjson.dumps(spec.body))
        self._tag = uuid.uuid4().hex[:12]  # new prompts never repeat across cells and rounds
        self._count = 0

    def next(self) -> bytes:
        if not self._spec.unique_prompts:
            return self._fixed
        self._count += 1
        *earlier, last = self._spec.body["messages"]
        content = f"[request {self._tag}-{self._count}] {last['content']}"
        body = {**self._spec.body, "messages": [*earlier, {**last, "content": content}]}
        return self._frame(orjson.dumps(body))

    def _frame(self, body: bytes) -> bytes:
        return self._head + str(len(body)).encode() + b"\r\n\r\n" + body


async def _connect(port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(_Connection, "127.0.0.1", port)
    return connection


def _record(result: LoadResult, reply: _Reply, latency_s: float) -> None:
    if reply.status != 200:
        result.errors[f"http {reply.status}"] += 1
        return
    result.latencies_ms.append(latency_s * 1000)
    if reply.cache is not None:
        result.cache[reply.cache] += 1


async def _closed_loop(spec: LoadSpec, requests: _Requests) -> LoadResult:
    result = LoadResult()
    warm = LoadResult()  # warm-up answers are thrown away
    connections = [await _connect(spec.port) for _ in range(spec.concurrency)]

    async def worker(slot: int, until: float, into: LoadResult) -> None:
        while time.perf_counter() < until:
            start = time.perf_counter()
            try:
                connection = connections[slot]
                if connection.closed:
                    connection = connections[slot] = await _connect(spec.port)
                    into.connections += 1
                reply = await connection.send(requests.next())
            except OSError:
                into.errors["connection"] += 1
                continue
            _record(into, reply, time.perf_counter() - start)
            if reply.close:
                connection.close()

    async def run(seconds: float, into: LoadResult) -> float:
        start = time.perf_counter()
        slots = range(spec.concurrency)
        workers = [asyncio.ensure_future(worker(i, start + seconds, into)) for i in slots]
        done, pending = await asyncio.wait(workers, timeout=seconds + spec.drain_s)
        for task in done:
            task.result()  # a bug in the generator stops the run instead of skewing it
        for task in pending:  # a request that never came back
            task.cancel()
            into.errors["unfinished"] += 1
        return time.perf_counter() - start

    await run(spec.warmup_s, warm)
    # Closed loop: each worker finishes the request it started before the window closed, so
    # the window is measured, not assumed.
    result.window_s = await run(spec.duration_s, result)
    for connection in connections:
        connection.close()
    return result


async def _open_loop(spec: LoadSpec, requests: _Requests) -> LoadResult:
    result = LoadResult()
    idle: asyncio.Queue[_Connection] = asyncio.Queue()
    opened = 0

    async def take() -> _Connection:
        nonlocal opened
        while True:
            if idle.empty() and opened < spec.max_connections:
                opened += 1
                result.connections += 1
                return await _connect(spec.port)
            connection = await idle.get()
            if not connection.closed:
                return connection
            opened -= 1  # the server closed it while it sat idle

    async def one(scheduled: float, into: LoadResult) -> None:
        nonlocal opened
        try:
            connection = await take()
            reply = await connection.send(requests.next())
        except OSError:  # refused, reset, or closed under the request
            into.errors["connection"] += 1
            opened -= 1
            return
        _record(into, reply, time.perf_counter() - scheduled)
        if reply.close:
            connection.close()
            opened -= 1
        else:
            idle.put_nowait(connection)

    async def run(seconds: float, into: LoadResult) -> float:
        start = time.perf_counter() + 0.001
        tasks = []
        for i in range(max(1, round(spec.rate * seconds))):
            scheduled = start + i / spec.rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            into.send_lag_ms.append((time.perf_counter() - scheduled) * 1000)
            tasks.append(asyncio.ensure_future(one(scheduled, into)))
        done, pending = await asyncio.wait(tasks, timeout=spec.drain_s)
        for task in done:
            task.result()  # a bug in the generator stops the run instead of skewing it
        for task in pending:
            task.cancel()
            into.errors["unfinished"] += 1
        # The window the answers took: the scheduled span, or longer when they came late.
        return max(seconds, time.perf_counter() - start)

    await run(spec.warmup_s, LoadResult())
    result.connections = 0
    result.window_s = await run(spec.duration_s, result)
    while not idle.empty():
        idle.get_nowait().close()
    return result


async def generate(spec: LoadSpec) -> LoadResult:
    """Load the server as the spec says and time every answer."""
    requests = _Requests(spec)
    if spec.mode == "closed":
        return await _closed_loop(spec, requests)
    return await _open_loop(spec, requests)


def _run(raw_spec: str) -> bytes:
    spec = LoadSpec(**orjson.loads(raw_spec))
    try:
        import uvloop  # the cheaper event loop when installed (uvicorn[standard] brings it)
    except ImportError:
        return asyncio.run(generate(spec)).to_json()
    return uvloop.run(generate(spec)).to_json()


if __name__ == "__main__":
    # A file, not stdout: the pipe may be left non-blocking by the event loop, and a result of
    # a few hundred kB would then be cut at the pipe's 64 kB.
    Path(sys.argv[2]).write_bytes(_run(sys.argv[1]))
