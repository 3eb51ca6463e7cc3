"""The demand head: one coefficient row per category, each centred on its own prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from router.estimate import CATEGORIES
from router.heads import Heads, Neighbours, neighbour_bank_path
from router.training.fit import FitConfig, _folds, _neighbours, fit_heads
from router.training.metrics import spearman
from router.training.targets import Targets

MATH, KNOWLEDGE = CATEGORIES.index("math"), CATEGORIES.index("knowledge")


def _targets(
    demand: npt.NDArray[np.float64],
    demand_weight: npt.NDArray[np.float64],
    category: npt.NDArray[np.int64],
    source: npt.NDArray[np.str_],
    rng: np.random.Generator,
) -> Targets:
    """Targets with the given demand labels and a flat, uninformative budget target."""
    n = len(demand)
    return Targets(
        demand=demand,
        demand_weight=demand_weight,
        log_budget=np.log(100.0 + 50.0 * rng.random(n)),
        budget_weight=np.ones(n),
        category=category,
        source=source,
    )


def _opposed_categories(
    n: int = 1200, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Targets, npt.NDArray[np.float64]]:
    """Two sources, one category each; feature 0 raises demand in one and lowers it in the other."""
    rng = np.random.default_rng(seed)
    category = np.where(np.arange(n) % 2 == 0, MATH, KNOWLEDGE).astype(np.int64)
    source = np.where(category == MATH, "gsm8k", "mmlu_pro").astype(np.str_)
    features = rng.normal(size=(n, 3)).astype(np.float32)
    sign = np.where(category == MATH, 1.0, -1.0)
    demand = 1.0 / (1.0 + np.exp(-(2.0 * sign * features[:, 0] + 0.3 * rng.normal(size=n))))
    labels = (rng.random(n) < demand).astype(np.float64)
    targets = _targets(demand, np.ones(n), category, source, rng)
    embeddings = rng.normal(size=(n, 4)).astype(np.float32)
    return embeddings, features, targets, labels


def _ranking_within(heads: Heads, emb, feats, targets: Targets, cat: int) -> float:
    rows = targets.category == cat
    x = heads.design(emb[rows], feats[rows])
    score = heads.demand(x, np.full(rows.sum(), cat, dtype=np.int64))
    return spearman(score, targets.demand[rows])


def test_each_category_learns_its_own_direction_of_demand() -> None:
    emb, feats, targets, labels = _opposed_categories()
    heads = fit_heads(emb, feats, targets, labels, FitConfig(demand_alpha=10.0))
    assert _ranking_within(heads, emb, feats, targets, MATH) > 0.8
    assert _ranking_within(heads, emb, feats, targets, KNOWLEDGE) > 0.8


def test_one_shared_demand_vector_cannot_rank_opposed_categories() -> None:
    emb, feats, targets, labels = _opposed_categories()
    shared = fit_heads(
        emb, feats, targets, labels, FitConfig(demand_alpha=10.0, demand_category_weight=0.0)
    )
    worst = min(_ranking_within(shared, emb, feats, targets, cat) for cat in (MATH, KNOWLEDGE))
    assert worst < 0.3


# Tests that re-design training prompts turn the neighbour column off: a training prompt's
# column was fitted out of fold, and read again through the full bank it finds itself.
NO_NEIGHBOURS = {"demand_neighbour_k": 0}


def test_raw_demand_is_centred_on_each_categorys_labelled_training_prompts() -> None:
    emb, feats, targets, labels = _opposed_categories()
    heads = fit_heads(emb, feats, targets, labels, FitConfig(demand_alpha=10.0, **NO_NEIGHBOURS))
    x = heads.design(emb, feats)
    for cat in (MATH, KNOWLEDGE):
        rows = targets.category == cat
        raw = x[rows] @ heads.demand_coef[cat] + heads.demand_intercept[cat]
        assert abs(raw.mean()) < 1e-9


def test_a_category_is_centred_where_its_row_was_fitted_not_on_its_unlabelled_prompts() -> None:
    """Code's labelled prompts are short, its unlabelled ones long (arena requests with code):
    a short code request must sit at code's level, not below it. A category with no labels
    (writing here) is centred on all its prompts."""
    rng = np.random.default_rng(1)
    code, writing = CATEGORIES.index("code"), CATEGORIES.index("writing")
    n = 300
    category = np.repeat([MATH, code, code, writing], n).astype(np.int64)
    source = np.repeat(["gsm8k", "humaneval", "arena_hard_v2", "arena_hard_v01"], n).astype(np.str_)
    features = rng.normal(size=(4 * n, 2)).astype(np.float32)
    features[2 * n : 3 * n, 0] += 3.0  # the unlabelled code prompts are much longer
    labelled = np.repeat([True, True, False, False], n)
    demand = np.where(labelled, 1.0 / (1.0 + np.exp(-2.0 * features[:, 0])), 0.0)
    targets = _targets(demand, labelled.astype(np.float64), category, source, rng)
    labels = np.where(source == "gsm8k", (rng.random(4 * n) < demand).astype(float), np.nan)
    labels[:n] = (rng.random(n) < demand[:n]).astype(float)
    emb = rng.normal(size=(4 * n, 3)).astype(np.float32)
    heads = fit_heads(emb, features, targets, labels, FitConfig(demand_alpha=10.0))
    x = heads.design(emb, features)
    raw = np.einsum("nd,nd->n", x, heads.demand_coef[category]) + heads.demand_intercept[category]
    assert heads.demand_coef[code, emb.shape[1]] > 0.1  # longer = more demand inside code
    assert abs(raw[n : 2 * n].mean()) < 1e-9  # labelled code prompts: centred
    # The long unlabelled ones sit well above the level.
    assert raw[2 * n : 3 * n].mean() > 2.0 * raw[n : 2 * n].std()
    assert abs(raw[3 * n :].mean()) < 1e-9  # writing has no labels: all its prompts


def test_only_the_named_categories_demand_rows_read_the_embedding() -> None:
    """Within knowledge, demand follows the embedding (MMLU-Pro's subjects); within math a
    feature. The knowledge row learns the embedding direction, the math row stays blind to it."""
    rng = np.random.default_rng(2)
    n = 1200
    category = np.where(np.arange(n) % 2 == 0, MATH, KNOWLEDGE).astype(np.int64)
    source = np.where(category == MATH, "gsm8k", "mmlu_pro").astype(np.str_)
    features = rng.normal(size=(n, 3)).astype(np.float32)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    signal = np.where(category == MATH, features[:, 0], emb[:, 0])
    demand = 1.0 / (1.0 + np.exp(-(2.0 * signal + 0.3 * rng.normal(size=n))))
    targets = _targets(demand, np.ones(n), category, source, rng)
    labels = (rng.random(n) < demand).astype(np.float64)
    knowledge_only = FitConfig(
        demand_alpha=10.0, demand_category_embedding=(("knowledge", 0.2),), **NO_NEIGHBOURS
    )
    with_emb = fit_heads(emb, features, targets, labels, knowledge_only)
    without = fit_heads(
        emb,
        features,
        targets,
        labels,
        FitConfig(demand_alpha=10.0, demand_category_embedding=(), **NO_NEIGHBOURS),
    )
    assert _ranking_within(with_emb, emb, features, targets, KNOWLEDGE) > 0.8
    assert abs(_ranking_within(without, emb, features, targets, KNOWLEDGE)) < 0.2
    assert _ranking_within(with_emb, emb, features, targets, MATH) > 0.8
    assert np.all(with_emb.demand_coef[MATH, : emb.shape[1]] == 0.0)
    assert np.all(without.demand_coef[:, : emb.shape[1]] == 0.0)


def test_a_format_1_head_with_one_demand_vector_loads_for_every_category() -> None:
    emb, feats, targets, labels = _opposed_categories(n=300)
    heads = fit_heads(
        emb,
        feats,
        targets,
        labels,
        FitConfig(demand_alpha=10.0, demand_category_weight=0.0, **NO_NEIGHBOURS),
    )
    old = heads.to_json()
    old["demand_coef"] = old["demand_coef"][MATH]
    old["demand_intercept"] = 0.25
    loaded = Heads.from_json(old)
    assert loaded.demand_coef.shape == (len(CATEGORIES), emb.shape[1] + feats.shape[1])
    x = heads.design(emb, feats)
    cats = targets.category
    expected_raw = x @ np.asarray(old["demand_coef"]) + 0.25
    logit = (
        loaded.demand_platt[0] * expected_raw
        + loaded.demand_platt[1]
        + loaded.demand_category_offset[cats]
    )
    assert loaded.demand(x, cats) == pytest.approx(1.0 / (1.0 + np.exp(-logit)))


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def test_category_levels_are_read_on_the_reference_pairs_scale() -> None:
    """A source's own base rate must not leak into its categories' levels.

    mmlu_pro (the reference pair) labels math and knowledge, bbh (another pair, with a lower
    base rate) labels math and reasoning: reasoning's level is its gap to math inside bbh,
    added to math's level in mmlu_pro.
    """
    from router.training.fit import _calibrate_demand

    reasoning = CATEGORIES.index("reasoning")
    cells = [
        ("mmlu_pro", MATH, 0.6),
        ("mmlu_pro", KNOWLEDGE, 0.4),
        ("bbh", MATH, 0.3),
        ("bbh", reasoning, 0.2),
    ]
    n = 1000
    labels = np.concatenate([(np.arange(n) < rate * n).astype(np.float64) for *_, rate in cells])
    category = np.repeat([c for _, c, _ in cells], n).astype(np.int64)
    source = np.repeat([s for s, _, _ in cells], n).astype(np.str_)
    _, offsets = _calibrate_demand(np.zeros(len(labels)), labels, category, source, "mmlu_pro")
    assert offsets[MATH] == pytest.approx(_logit(0.6), abs=0.01)
    assert offsets[KNOWLEDGE] == pytest.approx(_logit(0.4), abs=0.01)
    # On bbh's own scale reasoning would sit at logit(0.2), below knowledge; linked, above it.
    assert offsets[reasoning] == pytest.approx(_logit(0.6) + _logit(0.2) - _logit(0.3), abs=0.01)
    # Categories without labels borrow: code takes math's level, writing and chat the lowest.
    assert offsets[CATEGORIES.index("code")] == offsets[MATH]
    lowest = min(offsets[MATH], offsets[KNOWLEDGE], offsets[reasoning])
    assert offsets[CATEGORIES.index("writing")] == offsets[CATEGORIES.index("chat")] == lowest


def _clustered_knowledge(
    n: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], Targets, npt.NDArray[np.float64]]:
    """Math and knowledge prompts; knowledge demand is set by which of 12 topic clusters a prompt
    is in, high and low clusters interleaved around a circle: no linear read of the embedding
    ranks it, the cluster's own labelled prompts do."""
    rng = np.random.default_rng(seed)
    category = np.where(np.arange(n) % 2 == 0, MATH, KNOWLEDGE).astype(np.int64)
    source = np.where(category == MATH, "gsm8k", "mmlu_pro").astype(np.str_)
    cluster = rng.integers(0, 12, size=n)
    angle = 2 * np.pi * cluster / 12 + 0.05 * rng.normal(size=n)
    emb = np.stack([np.cos(angle), np.sin(angle), 0.05 * rng.normal(size=n)], axis=1)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    features = rng.normal(size=(n, 2)).astype(np.float32)
    level = np.where(cluster % 2 == 0, 0.8, 0.2)
    demand = np.where(category == MATH, 1 / (1 + np.exp(-2 * features[:, 0])), level)
    demand = np.clip(demand + 0.05 * rng.normal(size=n), 0.0, 1.0)
    targets = _targets(demand, np.ones(n), category, source, rng)
    return emb, features, targets, (rng.random(n) < demand).astype(np.float64)


def test_the_knowledge_row_reads_its_neighbours_labels_and_nothing_else_does() -> None:
    emb, feats, targets, labels = _clustered_knowledge(2000, seed=3)
    cfg = FitConfig(demand_alpha=10.0, demand_category_embedding=())
    with_nb = fit_heads(emb, feats, targets, labels, cfg)
    without = fit_heads(emb, feats, targets, labels, FitConfig(**{**vars(cfg), **NO_NEIGHBOURS}))
    new_emb, new_feats, new_targets, _ = _clustered_knowledge(1000, seed=4)  # unseen prompts
    assert _ranking_within(with_nb, new_emb, new_feats, new_targets, KNOWLEDGE) > 0.7
    assert abs(_ranking_within(without, new_emb, new_feats, new_targets, KNOWLEDGE)) < 0.3
    assert with_nb.neighbours is not None and without.neighbours is None
    # The column is the last design column: only knowledge's demand row reads it.
    reads = with_nb.demand_coef[:, -1] != 0.0
    assert reads[KNOWLEDGE] and reads.sum() == 1
    assert with_nb.budget_coef[-1] == 0.0 and np.all(with_nb.category_coef[:, -1] == 0.0)


def test_a_training_prompts_neighbour_column_never_reads_its_own_label() -> None:
    """Every prompt is its own nearest neighbour (k = 1). Fitted out of fold, its column is
    another prompt's label; through the full bank, as at inference, it is its own."""
    rng = np.random.default_rng(5)
    n = 300
    emb = rng.normal(size=(n, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    targets = _targets(
        rng.random(n), np.ones(n), np.full(n, KNOWLEDGE), np.full(n, "mmlu_pro"), rng
    )
    cfg = FitConfig(demand_neighbour_k=1)
    bank, column = _neighbours(emb, targets, np.ones(n, dtype=bool), _folds(n, 3, 0), cfg)
    assert bank is not None
    assert np.all(column != targets.demand)
    assert bank.column(emb) == pytest.approx(targets.demand, abs=1e-12)


def test_heads_with_a_neighbour_bank_save_and_load_without_pickles(tmp_path: Path) -> None:
    emb, feats, targets, labels = _clustered_knowledge(600, seed=6)
    heads = fit_heads(emb, feats, targets, labels, FitConfig(demand_alpha=10.0))
    path = tmp_path / "heads_static.json"
    heads.save(path)
    bank_file = neighbour_bank_path(path)
    assert bank_file.name == "heads_static_bank.npy"
    assert np.load(bank_file, allow_pickle=False).dtype == np.float16
    loaded = Heads.load(path)
    x, y = heads.design(emb, feats), loaded.design(emb, feats)
    cats = targets.category
    assert np.array_equal(x, y) and np.array_equal(heads.demand(x, cats), loaded.demand(y, cats))
    with pytest.raises(ValueError, match="neighbour bank"):
        Heads.from_json(heads.to_json())


def test_the_neighbour_column_equals_a_brute_force_float64_search() -> None:
    """Candidates are found in float32 and the nearest chosen in float64: the result must be
    what an exact search gives, also with near-ties (bank rows that differ in the 4th digit)."""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(50, 32))
    bank = np.repeat(base, 20, axis=0) + 1e-4 * rng.normal(size=(1000, 32))
    bank = (bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(np.float16).astype(float)
    value = rng.random(1000)
    queries = rng.normal(size=(100, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    column = Neighbours(bank=bank, value=value, k=20).column(queries)
    sims = queries.astype(np.float64) @ bank.T
    nearest = np.sort(np.argsort(-sims, axis=1, kind="stable")[:, :20], axis=1)
    assert np.array_equal(column, value[nearest].mean(axis=1))
