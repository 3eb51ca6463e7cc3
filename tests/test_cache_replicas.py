"""Two gateway instances on one Redis: an answer cached by one is a hit on the other."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.cache_support import ask, cached_gateway, shared_redis
from tests.fake_upstream import ANSWER, RunningUpstream


async def test_replicas_share_answers_through_redis(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    shared_redis()
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:"  # one deployment: one prefix
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        cached_gateway("redis", upstream, tmp_path / "a", key_prefix=prefix) as first,
        cached_gateway("redis", upstream, tmp_path / "b", key_prefix=prefix) as second,
    ):
        assert (await ask(first)).headers["x-rightsize-cache"] == "miss"
        hit = await ask(second)
        assert hit.headers["x-rightsize-cache"] == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == ANSWER
