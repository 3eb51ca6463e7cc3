"""The eval table scores calibration only where demand is meant as a probability."""

from __future__ import annotations

import numpy as np

from router.training.dataset import RoutingRecord
from router.training.evaluate import Predictions, markdown_table, score_rows


def _records(labels: list[int]) -> list[RoutingRecord]:
    """mmlu_pro records whose pair label (Mixtral fails, gpt-4o succeeds) is the given 0/1."""
    return [
        RoutingRecord(
            id=f"mmlu_pro:{i}",
            source="mmlu_pro",
            prompt=f"question {i}",
            category="stem",
            difficulty=None,
            outcomes={"Mixtral-8x7B-Instruct-v0.1": float(1 - y), "gpt-4o": 1.0},
            output_tokens={"gpt-4o": 100},
        )
        for i, y in enumerate(labels)
    ]


def _preds(name: str, demand: list[float], probability: bool = True) -> Predictions:
    n = len(demand)
    return Predictions(
        name, np.array(demand), np.full(n, 100.0), np.full(n, 200.0), probability=probability
    )


def test_a_calibrated_router_scores_a_lower_ece_than_an_overconfident_one() -> None:
    labels = [0, 0, 0, 1] * 25 + [0, 1, 1, 1] * 25  # rates 0.25 and 0.75
    calibrated = [0.25] * 100 + [0.75] * 100
    overconfident = [0.0] * 100 + [1.0] * 100
    records = _records(labels)
    rows = score_rows(
        records,
        [_preds("router", calibrated), _preds("overconfident", overconfident)],
        {"all": list(range(len(records)))},
    )
    by_method = {str(r["method"]): r for r in rows}
    assert float(str(by_method["router"]["ece"])) < 1e-9
    assert float(str(by_method["overconfident"]["ece"])) > 0.2
    # Same ranking, so the same APGR and AUC: only calibration tells them apart.
    assert by_method["router"]["auc"] == by_method["overconfident"]["auc"]
    assert float(str(by_method["router"]["brier"])) < float(
        str(by_method["overconfident"]["brier"])
    )


def test_a_ranking_only_method_gets_no_calibration_cells() -> None:
    records = _records([0, 1, 0, 1])
    rows = score_rows(
        records,
        [_preds("length", [3.0, 5.0, 4.0, 6.0], probability=False)],
        {"all": list(range(4))},
    )
    assert "auc" in rows[0]
    assert not {"ece", "ece_floor", "brier"} & set(rows[0])
    header = markdown_table(rows).splitlines()[0]
    assert "| auc | ece | ece_floor | brier |" in header
