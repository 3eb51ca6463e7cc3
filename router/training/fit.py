"""Fit the heads with scikit-learn and export them to plain arrays (training path only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.estimate import CATEGORIES
from router.features import LATEST_FEATURE_SET
from router.heads import Heads, Neighbours
from router.training.targets import Targets

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FitConfig:
    """Regularisation and seeds; defaults are what the shipped artifact uses.

    demand_embedding_weight scales the (standardised) embedding columns for the demand head:
    0 means demand uses only the hand-crafted features, which is what transferred across
    sources in leave-one-source-out validation (docs/router.md). demand_category_weight scales
    each category's own deviation from the shared demand coefficients (0: one shared vector;
    smaller: shrunk harder towards it; docs/router.md). demand_category_embedding gives named
    categories' demand rows the embedding as well, at the given column weight: within MMLU-Pro
    the subject moves the weak models' failure rate (chemistry 0.51 against psychology 0.11),
    the embedding knows the subject, and this gain also held for unseen subject groups; inside
    math a small weight also ranked held-out MATH and GSM8K better. Reasoning has none: its
    only labels are BBH's, where the embedding learns task identity.
    """

    demand_alpha: float = 300.0
    demand_embedding_weight: float = 0.0
    demand_category_weight: float = 0.5
    demand_category_embedding: tuple[tuple[str, float], ...] = (("knowledge", 0.2), ("math", 0.1))
    # The rows that also read the neighbour column: the mean demand of the prompt's k most
    # similar demand-labelled calibration-source (MMLU-Pro) training prompts; k = 0: none.
    demand_neighbour_k: int = 20
    demand_neighbour_categories: tuple[str, ...] = ("knowledge",)
    budget_alpha: float = 10.0
    category_c: float = 1.0
    calibration_source: str = "mmlu_pro"
    # Left out of the budget head: multiple-choice shape features help rank demand, but the
    # budget head extrapolated them badly to an unseen multiple-choice source (docs/router.md).
    budget_skipped_features: tuple[str, ...] = (
        "log_stem_chars",
        "log_option_chars",
        "numeric_option_share",
    )
    folds: int = 3
    seed: int = 0


def _within_source(
    x: Array, y: Array, w: Array, source: npt.NDArray[np.str_]
) -> tuple[Array, Array]:
    """Subtract each source's weighted mean from x and y (a fixed-effects fit).

    What separates one source from another (its format, its label scale) cannot help rank
    prompts inside an unseen benchmark, so the demand head learns only within-source contrasts.
    """
    xc, yc = x.copy(), y.copy()
    for src in np.unique(source):
        mask = source == src
        share = w[mask] / w[mask].sum()
        xc[mask] -= share @ x[mask]
        yc[mask] -= share @ y[mask]
    return xc, yc


def _rank_in_source(y: Array, source: npt.NDArray[np.str_]) -> Array:
    """Percentile rank of y within its source, so every source's label scale counts the same."""
    out = np.zeros_like(y)
    for src in np.unique(source):
        idx = np.nonzero(source == src)[0]
        order = np.argsort(y[idx], kind="stable")
        ranks = np.empty(len(idx))
        ranks[order] = np.arange(len(idx))
        # Tied labels share their mean rank.
        for value in np.unique(y[idx]):
            tie = y[idx] == value
            ranks[tie] = ranks[tie].mean()
        out[idx] = ranks / max(len(idx) - 1, 1)
    return out


def _fit_demand(
    x: Array,
    t: Targets,
    mask: npt.NDArray[np.bool_],
    col_weight: Array,
    alpha: float,
    category_weight: float,
    category_columns: Sequence[tuple[int, Array]] = (),
) -> Array:
    """Coefficients (n_categories, d) of the within-source demand ridge.

    The design is [x, w * x * (category == c) for each c]: one ridge penalty shrinks every
    category's own coefficients towards the shared ones (harder for a smaller weight w), so a
    category with little data (or none) keeps the shared vector. What makes a math word
    problem hard for a small model (more quantities, more steps) is not what makes a
    knowledge question hard. category_columns adds, for a category c, a block of columns only
    that category's row reads, scaled per column (the embedding for knowledge, FitConfig).
    """
    from sklearn.linear_model import Ridge

    y = _rank_in_source(t.demand[mask], t.source[mask])
    xw = x[mask] * col_weight
    cats = t.category[mask]
    # With a weight of 0 the deviation blocks are zero columns, whose ridge coefficients are 0.
    blocks = [xw] + [category_weight * xw * (cats == c)[:, None] for c in range(len(CATEGORIES))]
    n_shared = len(blocks)
    blocks += [x[mask] * weight * (cats == c)[:, None] for c, weight in category_columns]
    xc, yc = _within_source(np.hstack(blocks), y, t.demand_weight[mask], t.source[mask])
    model = Ridge(alpha=alpha, fit_intercept=False)
    model.fit(xc, yc, sample_weight=t.demand_weight[mask])
    coef = np.asarray(model.coef_, dtype=np.float64).reshape(len(blocks), x.shape[1])
    out = (coef[0] + category_weight * coef[1:n_shared]) * col_weight
    for j, (c, weight) in enumerate(category_columns):
        out[c] += coef[n_shared + j] * weight
    return np.asarray(out, dtype=np.float64)


def _category_centres(
    x: Array,
    coef: Array,
    category: npt.NDArray[np.int64],
    labelled: npt.NDArray[np.bool_],
) -> Array:
    """Minus each category's mean raw score over its demand-labelled training prompts.

    Centred scores leave each category's level to its calibrated offset alone; the
    coefficients only rank prompts inside the category. The centre is taken where the
    category's row was fitted, its labelled prompts (all its prompts when it has fewer than
    _MIN_CENTRE_ROWS): code's row is fitted on HumanEval, and centred on every code prompt,
    most of them long arena requests with pasted code, it put short code requests below chat.
    """
    centres = np.zeros(len(CATEGORIES))
    for c in range(len(CATEGORIES)):
        rows = category == c
        if (rows & labelled).sum() >= _MIN_CENTRE_ROWS:
            rows &= labelled
        if rows.any():
            centres[c] = -float(x[rows].mean(axis=0) @ coef[c])
    return centres


_MIN_CENTRE_ROWS = 30


def _fit_ridge(x: Array, y: Array, w: Array, alpha: float) -> tuple[Array, float]:
    from sklearn.linear_model import Ridge

    model = Ridge(alpha=alpha)
    model.fit(x, y, sample_weight=w)
    return np.asarray(model.coef_, dtype=np.float64), float(model.intercept_)


def _weighted_quantile(values: Array, weights: Array, q: float) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q * cum[-1])])


def _calibrate_demand(
    score: Array,
    labels: Array,
    category: npt.NDArray[np.int64],
    source: npt.NDArray[np.str_],
    reference_source: str,
) -> tuple[Array, Array]:
    """Platt scaling, logit = a * score + b[source, category], then one level per category.

    Each labelled source has its own model pair, and a pair's base rate (how often its weak
    model fails where its strong one succeeds) says nothing about prompts. So the intercepts are
    fitted per (source, category) and a category's level is read on the reference source's
    scale: its own intercept there, or, for a category the reference source lacks, its gap to a
    category both sources share (math is in MMLU-Pro and in BBH, which puts BBH's reasoning on
    MMLU-Pro's scale); with no shared category, its own intercept. Pairwise labels exist only
    for math, reasoning and knowledge prompts; the other categories borrow a level (an
    assumption, stated in the model card): code that of math, writing and chat the lowest
    fitted one, since small models most often match strong ones on open-ended prose.
    """
    from sklearn.linear_model import LogisticRegression

    cells = sorted({(str(s), int(c)) for s, c in zip(source, category, strict=True)})
    onehot = np.stack([(source == s) & (category == c) for s, c in cells], axis=1).astype(
        np.float64
    )
    model = LogisticRegression(C=1e4, max_iter=1000, fit_intercept=False)
    model.fit(np.hstack([score[:, None], onehot]), labels)
    slope = float(model.coef_[0, 0])
    icpt = dict(zip(cells, model.coef_[0, 1:].tolist(), strict=True))
    ref = {c: b for (s, c), b in icpt.items() if s == reference_source}
    fitted: dict[int, float] = dict(ref)
    for cat in sorted({c for _, c in cells} - set(ref)):
        levels = []
        for src in sorted({s for s, c in cells if c == cat}):
            shared = [c for (s, c) in icpt if s == src and c in ref]
            gaps = [icpt[(src, cat)] - icpt[(src, c)] + ref[c] for c in shared]
            levels.append(float(np.mean(gaps)) if gaps else icpt[(src, cat)])
        fitted[cat] = float(np.mean(levels))
    lowest = min(fitted.values())
    offsets = np.full(len(CATEGORIES), lowest)
    for ci, name in enumerate(CATEGORIES):
        if ci in fitted:
            offsets[ci] = fitted[ci]
        elif name == "code":
            offsets[ci] = fitted.get(CATEGORIES.index("math"), lowest)
    return np.array([slope, 0.0]), offsets


def _folds(n: int, k: int, seed: int) -> npt.NDArray[np.int64]:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.permutation(n) % k, dtype=np.int64)


def _category_head(x: Array, t: Targets, c: float, seed: int) -> tuple[Array, Array]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit(x, t.category)
    coef = np.zeros((len(CATEGORIES), x.shape[1]))
    icpt = np.full(len(CATEGORIES), -1e9)  # categories absent from training never win
    for row, cls in enumerate(model.classes_):
        if len(model.classes_) == 2:
            # Binary sklearn models keep one row; expand it into two opposing rows.
            sign = 1.0 if row == 1 else -1.0
            coef[cls], icpt[cls] = (
                sign * model.coef_[0] / 2,
                sign * model.intercept_[0] / 2,
            )
        else:
            coef[cls], icpt[cls] = model.coef_[row], model.intercept_[row]
    return coef, icpt


def fit_heads(
    embeddings: npt.NDArray[np.float32],
    features: npt.NDArray[np.float32],
    targets: Targets,
    pair_labels: Array,
    config: FitConfig | None = None,
    feature_names: Sequence[str] = (),
    feature_set: int = LATEST_FEATURE_SET,
) -> Heads:
    """Train demand, budget and category heads; pair_labels (NaN = none) calibrate demand.

    feature_names names the feature columns, so config.budget_skipped_features can be found;
    feature_set is recorded in the heads, so the router computes the features they read.
    """

    cfg = config or FitConfig()
    dem = targets.demand_weight > 0
    bud = targets.budget_weight > 0
    fold = _folds(len(embeddings), cfg.folds, cfg.seed)
    neighbours, neighbour_col = _neighbours(embeddings, targets, dem, fold, cfg)
    parts = [embeddings.astype(np.float64), features.astype(np.float64)]
    if neighbours is not None:
        parts.append(neighbour_col[:, None])
    raw = np.hstack(parts)
    mean, scale = raw.mean(axis=0), raw.std(axis=0) + 1e-6
    x = (raw - mean) / scale
    n_emb, n_extra = embeddings.shape[1], raw.shape[1] - embeddings.shape[1] - features.shape[1]
    col_weight = np.concatenate(
        [np.full(n_emb, cfg.demand_embedding_weight), np.ones(features.shape[1]), np.zeros(n_extra)]
    )
    # Blocks of columns that only one category's demand row reads: its embedding (at a column
    # weight) and the neighbour column.
    blocks: dict[int, Array] = {}
    for name, weight in cfg.demand_category_embedding:
        block = blocks.setdefault(CATEGORIES.index(name), np.zeros(x.shape[1]))
        block[:n_emb] = weight
    if neighbours is not None:
        for name in cfg.demand_neighbour_categories:
            blocks.setdefault(CATEGORIES.index(name), np.zeros(x.shape[1]))[-1] = 1.0
    category_columns = list(blocks.items())
    # Budget and category heads read neither the neighbour column nor the skipped features.
    other_cols = np.concatenate([np.ones(n_emb + features.shape[1]), np.zeros(n_extra)])
    budget_cols = other_cols.copy()
    for i, name in enumerate(feature_names):
        if name in cfg.budget_skipped_features:
            budget_cols[n_emb + i] = 0.0
    xb = x * budget_cols

    # Out-of-fold predictions give honest scores for calibration and residuals for quantiles.
    oof_score = np.full(len(x), np.nan)
    oof_resid = np.full(len(x), np.nan)
    for k in range(cfg.folds):
        tr, te = fold != k, fold == k
        coef = _fit_demand(
            x,
            targets,
            tr & dem,
            col_weight,
            cfg.demand_alpha,
            cfg.demand_category_weight,
            category_columns,
        )
        centres = _category_centres(x[tr], coef, targets.category[tr], dem[tr])
        cat_te = targets.category[te]
        oof_score[te] = np.einsum("nd,nd->n", x[te], coef[cat_te]) + centres[cat_te]
        bcoef, bicpt = _fit_ridge(
            xb[tr & bud],
            targets.log_budget[tr & bud],
            targets.budget_weight[tr & bud],
            cfg.budget_alpha,
        )
        oof_resid[te] = targets.log_budget[te] - (xb[te] @ bcoef + bicpt)

    # Calibrated on the pairwise labels, so the output is P(weak fails, strong succeeds).
    demand_coef = _fit_demand(
        x,
        targets,
        dem,
        col_weight,
        cfg.demand_alpha,
        cfg.demand_category_weight,
        category_columns,
    )
    demand_intercept = _category_centres(x, demand_coef, targets.category, dem)
    labelled = ~np.isnan(pair_labels)
    demand_platt, offsets_demand = _calibrate_demand(
        oof_score[labelled],
        pair_labels[labelled],
        targets.category[labelled],
        targets.source[labelled],
        cfg.calibration_source,
    )

    offsets = np.zeros((len(CATEGORIES), 2))
    all_q = [_weighted_quantile(oof_resid[bud], targets.budget_weight[bud], q) for q in (0.5, 0.9)]
    for ci in range(len(CATEGORIES)):
        mask = bud & (targets.category == ci)
        if mask.sum() >= 30:
            offsets[ci] = [
                _weighted_quantile(oof_resid[mask], targets.budget_weight[mask], q)
                for q in (0.5, 0.9)
            ]
        else:
            offsets[ci] = all_q

    b_coef, b_icpt = _fit_ridge(
        xb[bud], targets.log_budget[bud], targets.budget_weight[bud], cfg.budget_alpha
    )
    b_coef = b_coef * budget_cols
    cat_coef, cat_icpt = _category_head(x * other_cols, targets, cfg.category_c, cfg.seed)
    return Heads(
        input_mean=mean,
        input_scale=scale,
        demand_coef=demand_coef,
        demand_intercept=demand_intercept,
        demand_platt=demand_platt,
        demand_category_offset=offsets_demand,
        budget_coef=b_coef,
        budget_intercept=b_icpt,
        budget_offsets=offsets,
        category_coef=cat_coef,
        category_intercept=cat_icpt,
        neighbours=neighbours,
        feature_range=np.vstack([features.min(axis=0), features.max(axis=0)]).astype(np.float64),
        feature_set=feature_set,
    )


def _neighbours(
    embeddings: npt.NDArray[np.float32],
    targets: Targets,
    labelled: npt.NDArray[np.bool_],
    fold: npt.NDArray[np.int64],
    cfg: FitConfig,
) -> tuple[Neighbours | None, Array]:
    """The neighbour bank and every training row's out-of-fold neighbour column.

    The bank is the calibration source's demand-labelled prompts, as float16 like the stored
    artifact. A training row's column is read from the bank rows of the other folds, so it
    sees what a new prompt would: never its own label. None when k is 0 or the bank is empty
    (the source left out, as in leave-one-source-out).
    """
    in_bank = labelled & (targets.source == cfg.calibration_source)
    if cfg.demand_neighbour_k <= 0 or not in_bank.any():
        return None, np.zeros(len(embeddings))
    bank = embeddings[in_bank].astype(np.float16).astype(np.float64)
    value = targets.demand[in_bank]
    column = np.zeros(len(embeddings))
    bank_fold = fold[in_bank]
    for k in range(cfg.folds):
        rows = fold == k
        other = bank_fold != k
        part = Neighbours(bank=bank[other], value=value[other], k=cfg.demand_neighbour_k)
        column[rows] = part.column(embeddings[rows])
    return Neighbours(bank=bank, value=value, k=cfg.demand_neighbour_k), column
