"""The default openai client against a spent budget: seconds to its error and refused rows.

In process (the app on httpx's ASGI transport, the fake upstream on loopback); the client is
`openai.AsyncOpenAI` with its default `max_retries` (2). Usage:

    python benchmarks/budget_429_retries.py total   # or daily
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import openai

from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.test_sdk_answers import HELLO, refused_rows, spend_the_budget

CALLS = 3


async def main(period: str) -> None:
    with RunningUpstream() as upstream:
        db = Path(tempfile.mkdtemp()) / "rightsize.db"
        async with in_process_gateway(gateway_config(f"sqlite:///{db}", upstream)) as gw:
            await spend_the_budget(gw, period)
            client = openai.AsyncOpenAI(
                base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client
            )
            seconds = []
            for _ in range(CALLS):
                started = time.perf_counter()
                try:
                    await client.chat.completions.create(
                        model="direct", messages=HELLO, max_tokens=7
                    )
                except openai.RateLimitError:
                    pass
                seconds.append(round(time.perf_counter() - started, 3))
            rows = await refused_rows(gw, CALLS)
            print(
                f"{period}: seconds to the error {seconds}; refused rows for {CALLS} calls: "
                f"{len(rows)}"
            )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "total"))
