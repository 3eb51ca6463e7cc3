"""Write MODEL_CARD.md next to the artifact from the manifest and dev metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router.training.evaluate import markdown_table

_TARGETS = """\
## Targets
- **Reasoning demand** = P(a weak model fails and a strong model succeeds). Trained on soft labels:
  - `mmlu_pro`: gpt-4o correct x share of the *weak pool* (models under 45% train accuracy, listed below) that fail.
    Averaging the pairwise label over many weak models gives a smoother, less pair-specific difficulty than one pair
    (a single-pair logistic regression on embeddings was reported to fall below random on held-out MMLU).
  - `bbh`: davinci-direct fails and davinci-cot succeeds (0/1), the only pair the source has.
  - `math`: weak supervision, 0.1 x MATH level (0.1..0.5).
  - `gsm8k`, `humaneval`: weak supervision, 0.1 + 0.3 x within-source percentile of the reference solution length
    (more solution steps, more small-model failures).
  - `arena_hard_1k`, `arena_hard_v01`, `arena_hard_v2`: not used for demand. The 1k set's prompt ratings rate
    prompts, not a small and a strong model's outcomes, and favour shorter prompts (Spearman -0.29 with length),
    which made short chit-chat look hard.
  - Model: ridge regression of within-source percentile ranks of these targets on the {n_features} features, with
    per-source means removed (fixed effects), every source weighted equally: leave-one-source-out showed that
    embedding-based and pooled demand heads do not transfer to unseen sources (docs/router.md). Each category
    has its own coefficients, shrunk towards a shared vector (deviation weight {demand_category_weight:g} under one
    ridge penalty, alpha {demand_alpha:g}), and its raw score is centred on its demand-labelled training prompts
    (all its prompts when it has fewer than 30). Rows that also read the embedding (category, column weight):
    {demand_category_embedding}. Within MMLU-Pro the subject moves the weak models' failure rate, and the gain
    held for held-out subject groups; inside math the embedding also ranked held-out MATH and GSM8K better.
    Rows that also read the neighbour column, the mean demand target of the {demand_neighbour_k} most similar
    (cosine of embeddings) demand-labelled {calibration_source} training prompts (out of fold in training; the
    bank ships as `heads_*_bank.npy`): {demand_neighbour_categories}. Inside MMLU-Pro what a small model gets
    wrong clusters by topic more finely than a linear read of the embedding; held-out subject groups gained too.
  - Calibration: Platt scaling of out-of-fold scores against the pairwise labels (mmlu_pro Mixtral-8x7B-Instruct
    vs gpt-4o, bbh direct vs cot) with one intercept per (source, category). Each category's level is read on the
    {calibration_source} pair's scale: a category that source lacks (reasoning) is placed by its gap to a category both
    sources label (math), so a pair's own base rate does not become a category's level. Code borrows math's level,
    writing and chat the lowest fitted one (assumptions). The output is a calibrated probability for the
    {calibration_source} pair; elsewhere it is a ranking score on the same scale.
- **Token budget** = log cl100k tokens of a strong chat model's answer: gpt-4o (mmlu_pro), gpt-4 (arena_hard_1k),
  mean of log gpt-4-0314 / gpt-4-0613 (arena_hard_v01), o3-mini visible answer (arena_hard_v2), davinci-cot x 1.5 (bbh);
  human references are terse, so they are scaled to chat-answer length: gsm8k x 3, math x 2, humaneval x 4
  (assumptions, not measured on these prompts). Ridge regression of the mean on the embedding and the features but
  {budget_skipped_features}; p50 / p90 add the out-of-fold residual quantiles of the predicted category.
- **Category**: source labels mapped to math / code / reasoning / knowledge (MMLU-Pro stem + humanities) / writing;
  arena_hard_1k and arena_hard_v01 prompts, which have none, are labelled by content rules (code, math, puzzle and
  writing words, first match; else chat; `router/targets.py`). No extraction data exists in the training set.
"""


def _dict_lines(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in data.items())


def write_model_card(
    out: Path, manifest: dict[str, Any], dev_tables: dict[str, list[dict[str, object]]]
) -> None:
    """Render the card; dev tables are keyed by head set ('static', 'transformer')."""
    training = manifest["training"]
    parts = [
        "# Rightsize router — model card",
        "",
        f"- Date: {manifest['created']}",
        f"- Default runtime: `{manifest['default_runtime']}`",
        (
            f"- Encoder: `{manifest['transformer']['model']}` (sentence-transformers all-MiniLM-L6-v2, packaged), "
            f"max_seq_length {manifest['transformer']['max_seq_length']}; static runtime: a {manifest['static']['dims']}-d "
            "token table distilled from it (PCA + SIF weights), mean of the first "
            f"{manifest['static']['max_tokens']} tokens."
        ),
        (
            "- Inputs: the last user turn's text (see docs/router.md for the measurement); "
            f"{len(manifest['feature_names'])} hand-crafted features, feature set "
            f"{manifest['static']['feature_set']} ({', '.join(manifest['feature_names'])}), read on the "
            "text lower-cased, its whitespace collapsed and its multiple-choice labels cut (any layout: "
            "`A.`, `(a)`, `1)`, `- [ ]`; router/features.py)."
        ),
        (
            "- Data: the shared routing data (`train.jsonl.gz` / `dev.jsonl.gz`, split by sha256 of the id; "
            "Apache-2.0 / MIT sources)."
        ),
        f"- Train records: {_dict_lines(training['records'])}",
        f"- Dev records: {_dict_lines(training['dev_records'])}",
        f"- Weak pool (mmlu_pro): {', '.join(training['weak_pool'])}",
        (
            "- Format: JSON heads + float16 .npy token table and neighbour banks + tokenizer JSON; "
            "nothing executes code on load."
        ),
        (
            "- Reproduce: `rightsize train --data DIR --date "
            f"{manifest['created']}` (seeded; identical bytes on the same platform)."
        ),
        "",
        _TARGETS.format(
            **{
                **training["fit"],
                "budget_skipped_features": ", ".join(training["fit"]["budget_skipped_features"]),
                "demand_neighbour_categories": ", ".join(
                    training["fit"].get("demand_neighbour_categories", ())
                )
                or "none",
                "demand_category_embedding": ", ".join(
                    f"{name} {weight:g}"
                    for name, weight in training["fit"]["demand_category_embedding"]
                )
                or "none",
            },
            n_features=len(manifest["feature_names"]),
        ),
    ]
    for kind, rows in dev_tables.items():
        parts += [f"## Dev metrics — {kind} heads", "", markdown_table(rows), ""]
    parts += [
        (
            "APGR / CPT / AUC use the pair named above per source (overall = the pooled scorable prompts, each with its "
            "own pair); ece = calibration error of demand against the pair label (ten equal-count bins), "
            "ece_floor = what a calibrated predictor shows from sampling alone, brier = mean squared error; "
            "rho_level = Spearman of demand with MATH level; budget metrics are against the (scaled) targets."
        ),
        "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(parts), encoding="utf-8")
