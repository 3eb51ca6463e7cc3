"""The semantic tier and the cache's parts, driven directly with embeddings given by the caller."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache import (
    CachedAnswer,
    CacheSettings,
    MemoryStore,
    PromptCache,
    SemanticIndex,
    StreamAssembler,
    cache_key,
)
from gateway.cache.config import DEFAULT_SEMANTIC_THRESHOLD
from gateway.cache.guard import prompt_guard
from gateway.schemas import ChatRequest
from tests.cache_support import STORES, delete_prefix, shared_redis

DIM = 384
# Cosines just above and just below the default threshold (0.999 for the router's
# embedding), far enough from it for float32 rounding (about 1e-7) not to matter.
ABOVE_DEFAULT = (DEFAULT_SEMANTIC_THRESHOLD + 1) / 2
BELOW_DEFAULT = DEFAULT_SEMANTIC_THRESHOLD - (1 - DEFAULT_SEMANTIC_THRESHOLD)
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "fake-ok",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}],
    "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28},
}


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def near(vector: np.ndarray, cosine: float, seed: int = 99) -> np.ndarray:
    """A unit vector at the given cosine similarity to `vector`."""
    other = unit(seed)
    other = other - (other @ vector) * vector
    other /= np.linalg.norm(other)
    return (cosine * vector + np.sqrt(1 - cosine**2) * other).astype(np.float32)


# The stored question's casing paraphrase: it passes the lexical guard, so a miss with it is
# the embedding's or the partition's doing, not the guard's.
PARAPHRASE = "what is the capital of france"


def chat(question: str = "What is the capital of France?", system: str = "Be brief.") -> Any:
    return ChatRequest.model_validate(
        {
            "model": "direct",
            "temperature": 0,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
        }
    )


@pytest.fixture(params=STORES)
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[PromptCache]:
    teams = {
        "search": {"semantic": True},
        "ads": {"semantic": True},
        "loose": {"semantic": True, "semantic_threshold": 0.99},
        "plain": {},
    }
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    settings = CacheSettings.model_validate(
        {"teams": teams, "key_prefix": prefix, "redis_timeout_ms": 500, "semantic": {}}
    )
    url = shared_redis() if request.param == "redis" else None
    prompt_cache = PromptCache.build(settings, url)
    try:
        yield prompt_cache
    finally:
        await prompt_cache.aclose()
        if url:
            delete_prefix(url, prefix)


async def remember(cache: PromptCache, team: str, request: Any, vector: np.ndarray) -> None:
    miss = await cache.lookup(team, "direct", request, {}, embedding=vector)
    assert not miss.hit
    await cache.store(miss, "direct", COMPLETION)


async def test_near_embedding_above_the_threshold_is_a_semantic_hit(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    found = await cache.lookup(
        "search", "direct", chat(PARAPHRASE), {}, embedding=near(v, ABOVE_DEFAULT)
    )
    assert found.tier == "semantic"
    assert found.answer is not None
    assert found.answer.completion["choices"][0]["message"]["content"] == "Paris."
    assert found.similarity == pytest.approx(ABOVE_DEFAULT, abs=1e-6)


@pytest.mark.parametrize("cosine", [0.8, BELOW_DEFAULT])
async def test_embedding_below_the_threshold_is_a_miss(cache: PromptCache, cosine: float) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    found = await cache.lookup("search", "direct", chat(PARAPHRASE), {}, near(v, cosine))
    assert not found.hit


async def test_semantic_tier_never_serves_another_teams_answer(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    found = await cache.lookup("ads", "direct", chat(PARAPHRASE), {}, embedding=v)
    assert not found.hit


async def test_semantic_tier_never_crosses_a_different_system_prompt(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    other = chat(PARAPHRASE, system="Answer in French.")
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit


async def test_semantic_tier_never_crosses_deployments(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    assert not (await cache.lookup("search", "small", chat(PARAPHRASE), {}, embedding=v)).hit


async def test_team_threshold_overrides_the_default(cache: PromptCache) -> None:
    v = unit(1)
    for team in ("loose", "search"):
        await remember(cache, team, chat(), v)
    nearby = near(v, 0.995)  # between the loose team's 0.99 and the default
    assert (await cache.lookup("loose", "direct", chat(PARAPHRASE), {}, embedding=nearby)).hit
    assert not (await cache.lookup("search", "direct", chat(PARAPHRASE), {}, nearby)).hit


async def test_team_without_the_semantic_opt_in_gets_no_semantic_hit(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "plain", chat(), v)
    found = await cache.lookup("plain", "direct", chat(PARAPHRASE), {}, embedding=v)
    assert not found.hit
    assert cache.semantic.size("plain") == 0


async def test_pointer_to_a_deleted_entry_is_a_miss_and_is_dropped(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    await cache.backend.invalidate_team("search")
    found = await cache.lookup("search", "direct", chat(PARAPHRASE), {}, embedding=v)
    assert not found.hit
    assert cache.semantic.size("search") == 0


async def test_invalidating_a_team_clears_its_semantic_index(cache: PromptCache) -> None:
    await remember(cache, "search", chat(), unit(1))
    await cache.invalidate_team("search")
    assert cache.semantic.size("search") == 0


# The lexical guard: what the embedding cannot see. Each pair gets the same vector (cosine 1.0,
# what the router's averaged embedding gives such pairs or nearly), so only the guard decides.


async def test_the_same_prompt_with_the_same_vector_is_a_semantic_hit(cache: PromptCache) -> None:
    # The control for the refusals below: same words, another casing and spacing.
    v = unit(1)
    await remember(cache, "search", chat("A ball falls 10 feet. How long does it take?"), v)
    again = chat("a ball falls  10 feet. how long does it take")
    assert (await cache.lookup("search", "direct", again, {}, embedding=v)).hit


async def test_a_prompt_that_differs_only_in_a_number_is_never_a_semantic_hit(
    cache: PromptCache,
) -> None:
    # Long enough for the order check to pass: the signature alone refuses it.
    story = "A ball is dropped from the roof of a building. Ignoring air resistance and taking "
    story += (
        "gravity as constant, how long does it take to reach the ground? The roof is {} m high."
    )
    v = unit(1)
    await remember(cache, "search", chat(story.format(10)), v)
    other = chat(story.format(1000))
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit


async def test_numbers_attached_to_other_things_are_never_a_semantic_hit(
    cache: PromptCache,
) -> None:
    v = unit(1)
    await remember(cache, "search", chat("Put 5 balls in 3 boxes. In how many ways?"), v)
    other = chat("Put 3 balls in 5 boxes. In how many ways?")
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit


async def test_a_negated_question_is_never_a_semantic_hit(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat("Which of these animals is a mammal?"), v)
    other = chat("Which of these animals is not a mammal?")
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit


async def test_a_contraction_is_the_words_it_stands_for(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat("What can I do if I do not have a receipt?"), v)
    again = chat("What can I do if I don't have a receipt?")
    assert (await cache.lookup("search", "direct", again, {}, embedding=v)).hit


async def test_the_same_words_in_another_order_are_refused_and_counted(
    cache: PromptCache,
) -> None:
    v = unit(1)
    await remember(cache, "search", chat("Convert Celsius to Fahrenheit"), v)
    other = chat("Convert Fahrenheit to Celsius")
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit
    assert cache.metrics.semantic_refused == {"word_order": 1}


async def test_a_replaced_word_is_refused_and_counted(cache: PromptCache) -> None:
    v = unit(1)
    # Long enough for the order check to pass: one name in thirty words.
    team = "Alice, Bob, Claire, Dave and Eve are on the same team in a soccer match. At the start "
    team += "of the match, they are each assigned to a position on the field. At the end, "
    await remember(cache, "search", chat(team + "Dave is playing goalkeeper."), v)
    other = chat(team + "Claire is playing goalkeeper.")
    assert not (await cache.lookup("search", "direct", other, {}, embedding=v)).hit
    assert cache.metrics.semantic_refused == {"words_replaced": 1}


async def test_a_greeting_may_be_added_but_not_a_clause(cache: PromptCache) -> None:
    v = unit(1)
    await remember(cache, "search", chat(), v)
    greeted = chat("Hi! What is the capital of France?")
    longer = chat("What is the capital of France, and how many people live in its suburbs?")
    assert (await cache.lookup("search", "direct", greeted, {}, embedding=v)).hit
    assert not (await cache.lookup("search", "direct", longer, {}, embedding=v)).hit


# Long prompts (issue 17): a few differing words in a long shared text. The router's embedding
# is a mean over every token: it scores each pair below between 0.9993 and 1.0, above the
# default threshold. The guard must judge the differing span itself, not its share of the
# prompt.

FEW_SHOT = """Answer each question about the person's education in a few words, then give the \
reason.

Q: Ana studied nursing at a community college for two years, then transferred to a state \
university to finish her bachelor's degree. Where did she start her studies?
A: At the community college: she transferred to the university only after two years there.

Q: Ben trained as a welder at a trade school after high school, and ten years later he enrolled \
at a university to study engineering part-time. Which did he attend first?
A: The trade school: he went straight there after high school and enrolled at the university a \
decade later.

Q: Chloe left an online course after three weeks because it had no teacher, and joined an \
evening class at the local library instead, which she finished. Which course did she complete?
A: The evening class: she dropped the online course and finished the library class.

Q: Dmitri was admitted to a conservatory and to a medical school in the same spring, chose the \
conservatory, and now plays the cello in an orchestra. Which offer did he turn down?
A: The medical school: he accepted the conservatory and became a cellist.

Q: Emeka spent a year at {first} studying history, then moved to {second}, where he qualified \
as an electrician. Which did he leave?
A:"""
FEW_SHOT_ASKED = FEW_SHOT.format(first="a university", second="a trade school")

PREAMBLE = """You are the support assistant of Northwind Travel. Follow these rules in every \
answer.

1. Answer only from the booking policy below; if it does not cover the question, say so and \
offer to connect the customer with an agent.
2. Be brief: at most three sentences, no lists unless the customer asks for one.
3. Never promise a refund, a voucher or an upgrade; say what the policy allows and who decides.
4. Quote amounts in the currency of the booking.

Booking policy:
- A booking may be cancelled free of charge up to 24 hours after it was made. Later \
cancellations cost a fee of one night or, for flights, the airline's own fee.
- The travel date may be changed once without a fee if the change is made at least 14 days \
before departure; later changes cost the difference in fare plus a service fee.
- A ticket is personal. It may be transferred to another traveller on the same booking only by \
the lead passenger, and only before check-in opens.
- Entry requirements (passports, visas, vaccinations) are the traveller's responsibility; we \
link the official government pages but do not give legal advice.
- Luggage allowances are those of the carrier named on the ticket.

Customer question: """
# (stored question, another question, why the guard refuses it): each pair keeps the numbers
# and the count of negations, so the signature cannot tell them apart; only the words can.
OTHER_FINAL_QUESTIONS = {
    "entity": (
        "Where do I find the visa rules for Guinea?",
        "Where do I find the visa rules for Equatorial Guinea?",
        "words_added",
    ),
    "negation": (
        "Is there a fee if I do not cancel and change the date?",
        "Is there a fee if I cancel and do not change the date?",
        "word_order",
    ),
    "roles": (
        "Can the lead passenger transfer the ticket to my friend?",
        "Can my friend transfer the ticket to the lead passenger?",
        "word_order",
    ),
}


async def test_a_long_few_shot_prompt_with_two_phrases_swapped_is_a_miss(
    cache: PromptCache,
) -> None:
    v = unit(1)
    await remember(cache, "search", chat(FEW_SHOT_ASKED), v)
    swapped = FEW_SHOT.format(first="a trade school", second="a university")
    found = await cache.lookup("search", "direct", chat(swapped), {}, embedding=v)
    assert not found.hit
    assert cache.metrics.semantic_refused == {"word_order": 1}


@pytest.mark.parametrize("kind", list(OTHER_FINAL_QUESTIONS))
async def test_a_long_preamble_with_another_final_question_is_a_miss(
    cache: PromptCache, kind: str
) -> None:
    asked, other, reason = OTHER_FINAL_QUESTIONS[kind]
    v = unit(1)
    await remember(cache, "search", chat(PREAMBLE + asked), v)
    found = await cache.lookup("search", "direct", chat(PREAMBLE + other), {}, v)
    assert not found.hit
    assert cache.metrics.semantic_refused == {reason: 1}


def _respaced(text: str) -> str:
    return "\n " + "  ".join(text.split()) + " \n"


def _unpunctuated(text: str) -> str:
    return re.sub(r"[?!.,;:]+(\s|$)", r"\1", text)


@pytest.mark.parametrize(
    "rewrite", [str.upper, _unpunctuated, _respaced], ids=["case", "punctuation", "whitespace"]
)
async def test_a_long_prompt_differing_only_in_spelling_still_hits(
    cache: PromptCache, rewrite: Callable[[str], str]
) -> None:
    v = unit(1)
    await remember(cache, "search", chat(FEW_SHOT_ASKED), v)
    again = chat(rewrite(FEW_SHOT_ASKED))
    assert (await cache.lookup("search", "direct", again, {}, embedding=v)).hit


async def test_a_greeting_and_thanks_around_a_long_prompt_still_hit(cache: PromptCache) -> None:
    v = unit(1)
    question = "Can the lead passenger transfer the ticket to my friend?"
    await remember(cache, "search", chat(PREAMBLE + question), v)
    polite = f"Hi! Quick question: {PREAMBLE}Please, c{question[1:]} Thank you!"
    found = await cache.lookup("search", "direct", chat(polite), {}, embedding=v)
    assert found.hit


@pytest.mark.parametrize(
    "embedding", [np.zeros(DIM), np.ones(12), np.full(DIM, np.nan)], ids=["zero", "short", "nan"]
)
async def test_bad_embedding_skips_the_semantic_tier_and_is_counted(
    cache: PromptCache, embedding: np.ndarray
) -> None:
    found = await cache.lookup("search", "direct", chat(), {}, embedding=embedding)
    assert not found.hit
    assert cache.metrics.semantic_skipped["bad_embedding"] == 1


def test_semantic_index_evicts_the_oldest_entries_beyond_the_team_cap() -> None:
    index = SemanticIndex(DIM, max_entries_per_team=3)
    for i in range(5):
        index.add("search", "p", f"k{i}", unit(i))
    assert index.size("search") == 3
    assert index.nearest("search", "p", unit(0)).key != "k0"  # type: ignore[union-attr]
    assert index.nearest("search", "p", unit(4)).key == "k4"  # type: ignore[union-attr]


def test_semantic_index_finds_the_nearest_of_many() -> None:
    index = SemanticIndex(DIM, max_entries_per_team=10_000)
    for i in range(1000):
        index.add("search", "p", f"k{i}", unit(i))
    found = index.nearest("search", "p", near(unit(637), 0.98))
    assert found is not None
    assert found.key == "k637"


# Keys


def test_key_is_the_same_whatever_the_order_of_nested_fields() -> None:
    def with_tool(parameters: dict[str, Any]) -> Any:
        body = chat().model_dump(exclude_unset=True)
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
        return ChatRequest.model_validate(body)

    a = with_tool({"type": "object", "properties": {"x": {}, "y": {}}})
    b = with_tool({"properties": {"y": {}, "x": {}}, "type": "object"})
    assert cache_key("search", "direct", a) == cache_key("search", "direct", b)


def test_key_differs_by_team() -> None:
    assert cache_key("a", "direct", chat()).exact != cache_key("b", "direct", chat()).exact


def test_partition_ignores_the_last_message_only() -> None:
    first = cache_key("search", "direct", chat("one"))
    second = cache_key("search", "direct", chat("two"))
    assert first.exact != second.exact
    assert first.partition == second.partition


# Memory store


async def test_memory_store_evicts_the_least_recently_used_beyond_its_byte_bound() -> None:
    store = MemoryStore(max_bytes=300)
    for key in ("a", "b", "c"):
        await store.set("t", key, b"x" * 100, 60)
    await store.get("t", "a")
    await store.set("t", "d", b"x" * 100, 60)
    assert await store.get("t", "b") is None
    assert await store.get("t", "a") is not None
    assert store.bytes == 300


async def test_memory_store_entry_expires_after_its_ttl() -> None:
    now = [100.0]
    store = MemoryStore(max_bytes=1000, clock=lambda: now[0])
    await store.set("t", "k", b"v", 10)
    now[0] += 10.5
    assert await store.get("t", "k") is None
    assert store.bytes == 0


async def test_memory_store_drops_expired_entries_as_it_stores_new_ones() -> None:
    # Near copies of Redis entries live a second: expired ones must not fill the byte bound.
    now = [100.0]
    store = MemoryStore(max_bytes=10_000, clock=lambda: now[0])
    for n in range(50):
        await store.set("t", f"k{n}", b"x" * 100, 1)
        now[0] += 0.1
    assert len(store) <= 11
    assert store.bytes == 100 * len(store)
    assert await store.get("t", "k49") is not None


async def test_memory_store_never_returns_an_entry_to_another_team() -> None:
    store = MemoryStore(max_bytes=1000)
    await store.set("a", "k", b"v", 10)
    assert await store.get("b", "k") is None


# Streams


def test_streamed_tool_calls_are_reassembled_and_replayed() -> None:
    assembler = StreamAssembler()
    base = {"id": "c1", "model": "m", "object": "chat.completion.chunk", "created": 1}
    deltas: list[dict[str, Any]] = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                         "function": {"name": "lookup", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    ]  # fmt: skip
    for delta in deltas:
        assembler.add({**base, "choices": [{"index": 0, "delta": delta}]})
    assembler.add({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    completion = assembler.completion({"prompt_tokens": 5, "completion_tokens": 3})
    assert completion is not None
    call = completion["choices"][0]["message"]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"city": "Paris"}'},
    }
    replayed = list(CachedAnswer("t", "k", "d", completion).chunks(False, "0"))
    assert replayed[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert replayed[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_unfinished_stream_is_not_assembled() -> None:
    assembler = StreamAssembler()
    assembler.add({"id": "c", "choices": [{"index": 0, "delta": {"content": "Par"}}]})
    assert assembler.completion({"prompt_tokens": 1, "completion_tokens": 1}) is None


def test_hit_response_is_stamped_now_and_leaves_the_stored_entry_as_it_was() -> None:
    answer = CachedAnswer("t", "k", "d", {**COMPLETION, "created": 1})
    body = answer.response()
    body["choices"] = []
    assert body["created"] > 1
    assert answer.completion["created"] == 1
    assert answer.response()["choices"] == COMPLETION["choices"]


# The guard on its own


@given(st.text())
def test_the_guard_takes_any_text_and_never_refuses_the_same_prompt(text: str) -> None:
    guard = prompt_guard(text)
    assert guard.refuses(prompt_guard(text)) is None


@pytest.mark.parametrize("text", ["do n't", "n't", "'s", "???", ""])
def test_the_guard_takes_tokenised_and_empty_text(text: str) -> None:
    assert prompt_guard(text).refuses(prompt_guard(text)) is None
