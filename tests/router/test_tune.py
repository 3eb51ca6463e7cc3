"""tune --pairs: a guarded residual on the demand logit, written as a complete artifact."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from router import Router
from router.artifact import artifact_id, read_manifest
from router.cli import classify, tune
from router.training.budget_shift import fit_budget_shift
from router.training.metrics import routing_scores
from router.training.pairs import PairRow
from router.training.residual import ResidualConfig, cross_validate, residual_logit
from router.training.tune import compose, tuned_block, write_tuned_artifact
from router.training.tune import tune as tune_rows

FAST = ResidualConfig(repeats=1, bootstrap=300)


def _noise_file(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose outcomes follow the base logit exactly: a residual can only fit noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 148))
    logit = rng.normal(0.0, 1.0, n)
    gap = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    weak = np.where(gap, 0.0, (rng.random(n) < 0.5).astype(float))
    strong = np.where(gap, 1.0, weak)
    return x, logit, weak, strong


@pytest.mark.parametrize("n", [72, 300])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_a_small_noisy_file_the_guard_keeps_the_base(n: int, seed: int) -> None:
    x, logit, weak, strong = _noise_file(n, seed)
    guard = cross_validate(x, logit, weak, strong, ResidualConfig(seed=seed, bootstrap=300))
    assert not guard.accepted and guard.theta is None
    assert "the base is kept" in guard.reason


def test_too_few_labels_keep_the_base_without_fitting() -> None:
    x, logit, weak, strong = _noise_file(12, 0)
    guard = cross_validate(x, logit, weak, strong, FAST)
    assert not guard.accepted and guard.cv_log_loss == {} and "too few labels" in guard.reason


def test_tune_gains_on_held_out_rows_where_a_learnable_signal_exists() -> None:
    rng = np.random.default_rng(3)
    n = 1200
    x = rng.standard_normal((n, 148))
    base = rng.normal(0.0, 1.0, n)
    # The weak model fails where base and a direction of x the base does not read both say so.
    truth = 0.5 * base + 2.0 * x[:, 0] - 1.0 * x[:, 1]
    gap = rng.random(n) < 1.0 / (1.0 + np.exp(-truth))
    weak, strong = np.where(gap, 0.0, 1.0), np.ones(n)
    fed, rest = slice(0, 400), slice(400, n)
    guard = cross_validate(x[fed], base[fed], weak[fed], strong[fed], FAST)
    assert guard.accepted and guard.theta is not None
    assert guard.gain_interval[0] > 0.0 and guard.loss_gain_interval[0] > 0.0
    before = routing_scores(base[rest], weak[rest], strong[rest]).apgr
    tuned = residual_logit(x[rest], base[rest], guard.theta)
    after = routing_scores(tuned, weak[rest], strong[rest]).apgr
    assert after > before + 0.1


# Prompts whose outcome the base router does not know: the weak model fails the history
# questions and passes the chemistry ones (the reverse of what MMLU-Pro's subjects suggest).
_HISTORY = "medieval kingdom treaty monarch crusade dynasty feudal abbey charter siege".split()
_CHEMISTRY = "molecule reaction acid oxidation catalyst bond electron solvent ester ion".split()


def _topic_rows(n_each: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for i in range(n_each):
        for words, weak in ((_HISTORY, 0.0), (_CHEMISTRY, 1.0)):
            picked = " ".join(rng.sample(words, 4))
            prompt = f"Question {i}: explain how the {picked} relate, in two short paragraphs."
            # One row in ten goes against the rule: outcomes are noisy.
            if rng.random() < 0.1:
                weak = 1.0 - weak
            rows.append({"prompt": prompt, "weak": weak, "strong": 1.0, "strong_tokens": 150})
    return rows


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _demand(router: Router, prompts: list[str]) -> np.ndarray:
    return np.array([e.reasoning_demand for e in router.estimate_batch(prompts)])


@pytest.fixture(scope="module")
def base() -> Router:
    return Router.load(cache_size=0)


def test_a_tuned_artifact_round_trips_and_changes_demand(base: Router, tmp_path: Path) -> None:
    rows = [
        PairRow(str(r["prompt"]), float(r["weak"]), float(r["strong"]), 150, "all")  # type: ignore[arg-type]
        for r in _topic_rows(80, 0)
    ]
    outcome = tune_rows(base, rows, FAST)
    assert outcome.guard.accepted, outcome.guard.reason
    out = tmp_path / "tuned"
    block = tuned_block(outcome, base_dir(), "static", "2026-12-03", "pairs.jsonl")
    write_tuned_artifact(base_dir(), out, "static", outcome, block)

    loaded = Router.load(out)
    assert loaded.artifact_id == artifact_id(out) != base.artifact_id
    assert read_manifest(out)["tuned"]["base_artifact"] == base.artifact_id
    fresh = [str(r["prompt"]) for r in _topic_rows(30, 99)]
    history, chemistry = fresh[0::2], fresh[1::2]
    # What the file taught: history above chemistry, which the base had the other way round.
    assert _demand(loaded, history).mean() > _demand(loaded, chemistry).mean()
    assert _demand(base, history).mean() < _demand(base, chemistry).mean()
    # The saved heads give exactly the tuned heads' estimates.
    assert loaded.heads.demand_residual is not None
    np.testing.assert_array_equal(loaded.heads.demand_residual, outcome.heads.demand_residual)
    # Every answer in the file is 150 tokens, far shorter than the base predicts: p50 moved
    # by the fitted factor, towards 150.
    shift = outcome.budget.p50
    assert shift < 0.0
    tuned_p50 = np.array([e.token_budget_p50 for e in loaded.estimate_batch(fresh)])
    base_p50 = np.array([e.token_budget_p50 for e in base.estimate_batch(fresh)])
    np.testing.assert_allclose(tuned_p50, base_p50 * np.exp(shift), atol=1.0, rtol=0.01)
    assert np.median(np.abs(np.log(tuned_p50 / 150))) < np.median(np.abs(np.log(base_p50 / 150)))
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"Base artifact: `{base.artifact_id}`" in card and "Rows: 160" in card


def base_dir() -> Path:
    from router.artifact import default_artifact_dir

    return default_artifact_dir()


def test_tuning_a_tuned_artifact_composes_into_one_residual(base: Router) -> None:
    width = len(base.heads.input_mean)
    rng = np.random.default_rng(0)
    first = np.concatenate([rng.normal(0, 0.05, width - 1), [0.2, -0.3]])
    second = np.concatenate([rng.normal(0, 0.05, width - 1), [-0.1, 0.4]])
    once = compose(base.heads, first)
    twice = compose(once, second)
    prompts = ["Prove that sqrt(2) is irrational.", "Hi there!", "What is the capital of Peru?"]
    from router.features import features_batch

    x = base.heads.design(base.embed_batch(prompts), features_batch(prompts, 2))
    cats = base.heads.category(x)
    stepwise = residual_logit(x[:, : width - 1], once.demand_logit(x, cats), second)
    np.testing.assert_allclose(twice.demand_logit(x, cats), stepwise, rtol=1e-10, atol=1e-10)


def test_cli_end_to_end_on_a_tiny_file_keeps_the_base(base: Router, tmp_path: Path) -> None:
    pairs = _write(tmp_path / "tiny.jsonl", _topic_rows(6, 1))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        tune, ["--pairs", str(pairs), "--out", str(out), "--date", "2026-12-03"]
    )
    assert result.exit_code == 0, result.output
    assert "apgr_before" in result.output and "too few labels" in result.output
    tuned = read_manifest(out)["tuned"]
    assert tuned["accepted"] is False and tuned["rows"] == 12 and tuned["date"] == "2026-12-03"
    prompts = [str(r["prompt"]) for r in _topic_rows(6, 1)]
    np.testing.assert_array_equal(_demand(Router.load(out), prompts), _demand(base, prompts))
    # classify --artifact reads it too.
    src, dst = tmp_path / "in.jsonl", tmp_path / "cls.jsonl"
    src.write_text(json.dumps({"id": 1, "prompt": prompts[0]}) + "\n", encoding="utf-8")
    ran = CliRunner().invoke(
        classify, ["--input", str(src), "--output", str(dst), "--artifact", str(out)]
    )
    assert ran.exit_code == 0, ran.output
    # classify writes demand to four decimals.
    assert json.loads(dst.read_text())["reasoning_demand"] == pytest.approx(
        float(_demand(base, prompts[:1])[0]), abs=1e-4
    )


def test_cli_tunes_on_a_learnable_file_and_the_gateway_loads_the_result(
    base: Router, tmp_path: Path
) -> None:
    from gateway.cli import main

    pairs = _write(tmp_path / "topics.jsonl", _topic_rows(80, 0))
    out = tmp_path / "tuned"
    result = CliRunner().invoke(main, ["tune", "--pairs", str(pairs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_manifest(out)["tuned"]["accepted"] is True
    cfg = tmp_path / "rs.yaml"
    cfg.write_text(
        f'store: {{url: "sqlite:///{tmp_path / "rs.db"}"}}\nrouter: {{artifact: "{out}"}}\n'
    )
    prompt = str(_topic_rows(1, 5)[0]["prompt"])
    routed = CliRunner().invoke(main, ["route", prompt, "--config", str(cfg), "--json"])
    assert routed.exit_code == 0, routed.output
    demand = json.loads(routed.output)["estimate"]["reasoning_demand"]
    # route prints demand to four decimals.
    assert demand == pytest.approx(float(_demand(Router.load(out), [prompt])[0]), abs=1e-4)
    assert demand != pytest.approx(float(_demand(base, [prompt])[0]), abs=1e-3)


def test_tune_is_deterministic_byte_for_byte(base: Router, tmp_path: Path) -> None:
    pairs = _write(tmp_path / "topics.jsonl", _topic_rows(80, 0))
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = CliRunner().invoke(
            tune, ["--pairs", str(pairs), "--out", str(out), "--date", "2026-12-03"]
        )
        assert result.exit_code == 0, result.output
    assert read_manifest(outs[0])["tuned"]["accepted"] is True
    # Same file, same seed: the same residual, manifest and card, whatever the run.
    for name in ("heads_static.json", "router.json", "MODEL_CARD.md"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_a_non_empty_out_directory_is_refused(tmp_path: Path) -> None:
    pairs = _write(tmp_path / "p.jsonl", _topic_rows(3, 0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = CliRunner().invoke(tune, ["--pairs", str(pairs), "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output


def _lengths(n: int, factor: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base p50 / p90 and answers `factor` times longer than p50, with log-normal spread."""
    rng = np.random.default_rng(seed)
    p50 = rng.uniform(50, 800, n).round()
    actual = np.maximum(1.0, (p50 * factor * np.exp(rng.normal(0.0, 0.4, n))).round())
    return p50, (p50 * 2.0).round(), actual


def test_budgets_move_to_a_more_verbose_strong_model() -> None:
    p50, p90, actual = _lengths(400, 2.5, 0)
    shift = fit_budget_shift(p50, p90, actual, draws=300)
    assert np.exp(shift.p50) == pytest.approx(2.5, rel=0.1)
    assert shift.oof_p50 is not None and shift.oof_p90 is not None
    # Out of fold, p50 is within 2x nearly always and p90 covers about 90% of answers.
    assert np.mean(np.abs(np.log2(shift.oof_p50 / actual)) <= 1.0) > 0.9
    assert np.mean(actual <= shift.oof_p90) == pytest.approx(0.9, abs=0.04)


def test_budgets_stay_when_the_base_is_already_right_or_rows_are_few() -> None:
    p50, _, actual = _lengths(300, 1.0, 1)
    # p90 at the 90% quantile of the spread already: nothing to gain on either.
    p90 = (p50 * np.exp(0.4 * 1.2816)).round()
    kept = fit_budget_shift(p50, p90, actual, draws=300)
    assert kept.p50 == 0.0 and kept.p90 == 0.0 and "beyond noise" in kept.reason
    few = fit_budget_shift(*_lengths(12, 3.0, 2), draws=300)
    assert few.p50 == 0.0 and few.p90 == 0.0 and "fewer than" in few.reason


def test_a_shift_that_one_group_pays_for_is_refused() -> None:
    # Most rows' strong model writes 3x the base p50; a smaller group's writes what the base says.
    a50, a90, a_actual = _lengths(600, 3.0, 3)
    b50, b90, b_actual = _lengths(200, 1.0, 4)
    p50, p90 = np.concatenate([a50, b50]), np.concatenate([a90, b90])
    actual = np.concatenate([a_actual, b_actual])
    alone = fit_budget_shift(p50, p90, actual, draws=300)
    assert alone.p50 > 0.0
    grouped = fit_budget_shift(p50, p90, actual, draws=300, groups=["a"] * 600 + ["b"] * 200)
    assert grouped.p50 == 0.0 and "'b' would be worse off" in grouped.reason


def test_a_residual_that_one_group_pays_for_is_refused() -> None:
    rng = np.random.default_rng(5)
    n = 1200
    x = rng.standard_normal((n, 20))
    base = rng.normal(0.0, 1.0, n)
    group_b = np.arange(n) >= 900
    # Group a's outcomes follow x[:, 0]; group b's follow the base, and the residual's
    # x[:, 0] only scrambles its order.
    truth = np.where(group_b, 3.0 * base, 0.3 * base + 2.5 * x[:, 0])
    gap = rng.random(n) < 1.0 / (1.0 + np.exp(-truth))
    weak, strong = np.where(gap, 0.0, 1.0), np.ones(n)
    pooled = cross_validate(x, base, weak, strong, FAST)
    assert pooled.accepted
    groups = ["b" if g else "a" for g in group_b]
    grouped = cross_validate(x, base, weak, strong, FAST, groups=groups)
    assert not grouped.accepted and "group 'b' loses" in grouped.reason
