"""Cost of one PolicyEngine.decide() call (pure, no I/O): p50 and p99 over many calls.

python benchmarks/policy_decide.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import time

from policies import (
    Catalog,
    ModelInfo,
    ModelSpec,
    PolicyEngine,
    PolicySpec,
    RoutingRequest,
    TeamContext,
)
from router import Estimate


def build() -> PolicyEngine:
    names = ["local-llama", "mini", "mini-b", "big", "big-b", "thinker"]
    specs = [
        ModelSpec.model_validate(
            {
                "name": n,
                "model": f"openai/{n}",
                "price": {"input_per_mtok": str(i + 1), "output_per_mtok": str(4 * (i + 1))},
                "capabilities": {"context_window": 128_000, "tools": True, "vision": i != 0},
            }
        )
        for i, n in enumerate(names)
    ]
    spec = PolicySpec.model_validate(
        {
            "tiers": [
                {"name": "light", "deployments": names[:3]},
                {"name": "standard", "deployments": names[3:5], "min_demand": 0.35},
                {"name": "reasoning", "deployments": names[5:], "min_demand": 0.7},
            ],
            "teams": {"search": {"allowed_tiers": ["light", "standard", "reasoning"]}},
            "soft_budget": {"threshold": 0.8, "cap_tier": "light"},
        }
    )
    return PolicyEngine(Catalog.build(specs, lambda _: ModelInfo(price=None)), spec, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    engine = build()
    team = TeamContext("search", budget_used=0.5)
    estimates = [Estimate(d / 10, 100, 400, "chat") for d in range(10)]
    request = RoutingRequest(model="auto", prompt_tokens=350, needs_tools=True)
    timings = []
    for i in range(args.calls):
        estimate = estimates[i % 10]
        start = time.perf_counter_ns()
        engine.decide(request, estimate, team)
        timings.append(time.perf_counter_ns() - start)
    timings.sort()
    p50, p99 = timings[len(timings) // 2] / 1000, timings[int(len(timings) * 0.99)] / 1000
    print(f"decide(): {args.calls} calls, p50 {p50:.1f} µs, p99 {p99:.1f} µs")


if __name__ == "__main__":
    main()
