"""`eval --peer litellm`: LiteLLM's own complexity router scored beside ours on the same split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from router.artifact import default_artifact_dir
from router.cli import eval_cmd
from router.training.evaluate import Predictions, score_rows
from router.training.peers import PEERS, litellm_complexity, peer_predictions
from router.training.train import TrainOptions, train_artifact
from tests.router.synthetic import write_synthetic_data
from tests.router.test_evaluate import _records

GREETING = "Hello!"
# Two of LiteLLM's reasoning markers and a long, technical ask: its heuristic's top tier.
HARD = (
    "Think step by step and reason through it carefully: analyze the time complexity of this "
    "distributed consensus algorithm, prove that it terminates, then derive a tighter bound "
    "for the worst case and compare it with Paxos and Raft."
)


def test_litellm_puts_a_hard_request_in_a_higher_tier_than_a_greeting() -> None:
    preds = litellm_complexity([GREETING, HARD])
    assert preds.demand[0] == 0.0  # the lowest tier
    assert preds.demand[1] > preds.demand[0]
    assert ((preds.demand >= 0.0) & (preds.demand <= 1.0)).all()


def test_a_peer_without_budgets_gets_routing_cells_and_no_budget_cells() -> None:
    records = _records([0, 1, 0, 1])
    n = len(records)

    def peer(name: str, demand: list[float]) -> Predictions:
        nan = np.full(n, np.nan)
        return Predictions(name, np.array(demand), nan, nan, probability=False, budget=False)

    rows = score_rows(
        records,
        [peer("right", [0.0, 1.0, 0.0, 1.0]), peer("wrong", [1.0, 0.0, 1.0, 0.0])],
        {"all": list(range(n))},
    )
    right, wrong = rows
    assert float(str(right["apgr"])) > 0.5 > float(str(wrong["apgr"]))
    assert "within_2x" not in right and "ece" not in right


def test_a_subset_keeps_each_records_own_outputs() -> None:
    preds = Predictions("m", np.arange(5.0), np.arange(5.0) * 10, np.arange(5.0) * 20)
    part = preds.subset([3, 1])
    assert part.demand.tolist() == [3.0, 1.0]
    assert part.p90.tolist() == [60.0, 20.0]


def test_an_unknown_peer_is_refused() -> None:
    assert PEERS == ("litellm",)
    with pytest.raises(ValueError, match="litellm"):
        peer_predictions("routellm", [])


def test_eval_prints_the_peer_beside_the_router_and_the_baselines(tmp_path: Path) -> None:
    data = write_synthetic_data(tmp_path / "data")
    artifact = tmp_path / "artifact"
    train_artifact(
        data,
        TrainOptions(
            out_dir=artifact,
            date="2026-12-03",
            with_transformer=False,
            reuse_static_from=default_artifact_dir(),
            cache_dir=None,
        ),
    )
    args = ["--data", str(data), "--artifact", str(artifact), "--peer", "litellm"]
    result = CliRunner().invoke(eval_cmd, args)
    assert result.exit_code == 0, result.output
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in result.output.splitlines()]
    methods = {row[1] for row in rows if len(row) > 1}
    assert {"router", "length", "litellm (heuristic)", "random"} <= methods
    # The peer's APGR cell is filled on each source with a pair (mmlu_pro, bbh), its budget not.
    peer = {row[0]: row for row in rows if len(row) > 1 and row[1] == "litellm (heuristic)"}
    assert peer["mmlu_pro"][3] and peer["bbh"][3]
    assert not peer["mmlu_pro"][11]


def test_peer_needs_the_dev_split() -> None:
    result = CliRunner().invoke(eval_cmd, ["--pairs", __file__, "--peer", "litellm"])
    assert result.exit_code == 2
    assert "--peer" in result.output
