"""Out-of-distribution spot checks: prompts written for this check, not taken from any data set.

Usage: python benchmarks/router_spot_checks.py [--runtime static]
Prints each prompt's intended category, the router's category, demand and budget, then the
category hit rate and the mean demand per intended category (docs/router.md).
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from router import Router

SPOT_CHECKS: list[tuple[str, str]] = [
    ("math", "What is the area of a triangle with vertices at (0,0), (4,0) and (1,3)?"),
    ("math", "Solve for x: 3x + 7 = 22."),
    ("math", "Prove that there are infinitely many primes, step by step."),
    ("math", "If a fair die is rolled twice, what is the probability that the sum is 8?"),
    ("math", "Find the derivative of f(x) = x^3 * sin(x)."),
    ("math", "A train travels 300 km in 2.5 hours. What is its average speed in m/s?"),
    ("math", "How many ways can 5 people be seated around a round table?"),
    ("math", "Compute the sum of all integers from 1 to 1000 that are divisible by 3 or 5."),
    ("code", "Write a Python function that returns the n-th Fibonacci number using memoization."),
    (
        "code",
        "Why does my React component re-render every time the parent updates? Here is the code: function Child({items}) { return items.map(i => <li>{i}</li>) }",
    ),
    ("code", "Write a SQL query that finds the top 3 customers by total order value."),
    ("code", "Implement a thread-safe LRU cache in Java."),
    ("code", "Fix the bug in this bash script: for f in *.txt do echo $f done"),
    (
        "code",
        "Explain the difference between a process and a thread, with a C example using pthreads.",
    ),
    (
        "code",
        "Write a program to find the longest common subsequence of two strings in O(mn) time.",
    ),
    (
        "reasoning",
        "If you overtake the person in second place in a race, what place are you in now?",
    ),
    (
        "reasoning",
        "Alice is taller than Bob. Bob is taller than Carol. Is Carol taller than Alice? Explain.",
    ),
    (
        "reasoning",
        "Three boxes are labelled apples, oranges and mixed, and every label is wrong. You may take one fruit from one box. How do you relabel all boxes?",
    ),
    (
        "reasoning",
        "A man points to a photo and says: brothers and sisters I have none, but that man's father is my father's son. Who is in the photo?",
    ),
    (
        "reasoning",
        "Each of David's three sisters has one brother. How many brothers does David have?",
    ),
    ("reasoning", "Which word does not belong: apple, banana, carrot, grape? Why?"),
    ("knowledge", "What is quantum superposition, and how does it relate to entanglement?"),
    ("knowledge", "Explain how the Federal Reserve uses interest rates to control inflation."),
    ("knowledge", "What were the main causes of the First World War?"),
    ("knowledge", "Describe the process of photosynthesis in plants."),
    ("knowledge", "What is the capital of Australia?"),
    ("knowledge", "How does a vaccine train the immune system?"),
    (
        "writing",
        "Write a travel blog post about a recent trip to Iceland, highlighting cultural experiences and must-see sights.",
    ),
    ("writing", "Compose a short poem about autumn leaves."),
    ("writing", "Draft a polite email to my landlord asking to fix the heating."),
    ("writing", "Write a persuasive essay arguing that cities should invest in public transport."),
    (
        "writing",
        "Rewrite this paragraph to sound more formal: hey guys, the meeting got moved to 3, don't be late.",
    ),
    ("writing", "Write a short story about a robot who learns to paint."),
    ("chat", "Pretend you are a pirate captain and greet your new crew."),
    ("chat", "What's a good name for a golden retriever puppy?"),
    ("chat", "Hi! How are you today?"),
    ("chat", "Give me three tips for staying motivated while working from home."),
    ("chat", "Translate 'hello' to French."),
    (
        "chat",
        "Summarize the following text in one sentence: The meeting covered budget, hiring and the new office.",
    ),
    (
        "chat",
        "Extract all dates from this text: The launch is on 3 May 2024 and the review on 10 June 2024.",
    ),
]


def main() -> None:
    """Print the table and the summary lines."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", default="static")
    args = parser.parse_args()
    router = Router.load(runtime=args.runtime, cache_size=0)
    estimates = router.estimate_batch([prompt for _, prompt in SPOT_CHECKS])
    demand: dict[str, list[float]] = defaultdict(list)
    hits = 0
    print("| intended | category | demand | p50/p90 | prompt |")
    print("|---|---|---|---|---|")
    for (intended, prompt), est in zip(SPOT_CHECKS, estimates, strict=True):
        hits += est.category == intended
        demand[intended].append(est.reasoning_demand)
        print(
            f"| {intended} | {est.category} | {est.reasoning_demand:.3f} | "
            f"{est.token_budget_p50}/{est.token_budget_p90} | {prompt[:70]} |"
        )
    print(f"\ncategory right: {hits} of {len(SPOT_CHECKS)}")
    means = sorted(((sum(v) / len(v), k) for k, v in demand.items()), reverse=True)
    print("mean demand by intended category: " + ", ".join(f"{k} {m:.2f}" for m, k in means))


if __name__ == "__main__":
    main()
