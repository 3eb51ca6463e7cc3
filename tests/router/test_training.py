"""Training: seeded, byte-for-byte reproducible, and the artifact stands alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from router import Router
from router.artifact import default_artifact_dir
from router.features import LATEST_FEATURE_SET
from router.training.train import TrainOptions, train_artifact
from tests.router.synthetic import write_synthetic_data


def _train(data: Path, out: Path) -> None:
    options = TrainOptions(
        out_dir=out,
        date="2026-11-22",
        with_transformer=False,
        reuse_static_from=default_artifact_dir(),
        cache_dir=None,
    )
    train_artifact(data, options)


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_training_twice_on_the_same_data_gives_identical_artifacts(
    tmp_path: Path,
) -> None:
    data = write_synthetic_data(tmp_path / "data")
    _train(data, tmp_path / "a")
    _train(data, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_trained_artifact_loads_and_estimates_after_the_data_is_gone(
    tmp_path: Path,
) -> None:
    data = write_synthetic_data(tmp_path / "data")
    _train(data, tmp_path / "artifact")
    shutil.rmtree(data)
    router = Router.load(tmp_path / "artifact", runtime="static")
    estimate = router.estimate("Prove that the square root of 2 is irrational, step by step.")
    assert 0.0 <= estimate.reasoning_demand <= 1.0
    assert estimate.token_budget_p90 >= estimate.token_budget_p50 >= 1


def test_training_on_synthetic_data_learns_that_hard_prompts_are_harder(
    tmp_path: Path,
) -> None:
    data = write_synthetic_data(tmp_path / "data")
    _train(data, tmp_path / "artifact")
    router = Router.load(tmp_path / "artifact", runtime="static")
    hard = router.estimate(
        "Prove that for every integer n > 7, the sum of the first n odd numbers is n^2, step by step."
    )
    easy = router.estimate("Translate 'river' to French.")
    assert hard.reasoning_demand > easy.reasoning_demand
    assert hard.token_budget_p50 > easy.token_budget_p50


def test_heads_read_with_another_feature_set_than_their_own_are_refused_with_a_clear_error(
    tmp_path: Path,
) -> None:
    import json

    import pytest

    data = write_synthetic_data(tmp_path / "data")
    _train(data, tmp_path / "artifact")
    heads_path = tmp_path / "artifact" / "heads_static.json"
    heads = json.loads(heads_path.read_text())
    assert heads["feature_set"] == LATEST_FEATURE_SET
    heads["feature_set"] = 1  # set 1 has one more feature than the heads were fitted on
    heads_path.write_text(json.dumps(heads))
    with pytest.raises(ValueError, match=r"feature set 1.*retrain"):
        Router.load(tmp_path / "artifact", runtime="static")


def test_train_takes_any_sentence_transformers_model_by_path(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from router.cli import train
    from tests.router.tiny_encoder import write_tiny_sentence_model

    model = write_tiny_sentence_model(tmp_path / "model")
    data = write_synthetic_data(tmp_path / "data")
    out = tmp_path / "artifact"
    args = ["--data", str(data), "--out", str(out), "--date", "2026-12-03"]
    args += ["--encoder-model", str(model), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(train, args)
    assert result.exit_code == 0, result.output

    manifest = json.loads((out / "router.json").read_text())
    assert manifest["transformer"]["model"] == str(model)
    assert manifest["static"]["distilled_from"] == str(model)
    for runtime in ("sentence-transformers", "static"):
        router = Router.load(out, runtime=runtime)
        assert router.encoder.dim == 32  # the tiny model's width, not MiniLM's 384
        hard = router.estimate(
            "Prove that for every integer n > 7, the sum of the first n odd numbers is n^2, "
            "step by step."
        )
        assert (
            hard.reasoning_demand > router.estimate("Translate 'river' to French.").reasoning_demand
        )
