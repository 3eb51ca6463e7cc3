"""Out-of-distribution spot checks: prompts written for this check, not taken from any data set.

Usage: python benchmarks/router_spot_checks.py [--runtime static] [--set a|b|c]
Prints each prompt's intended category, the router's category, demand and budget, then the
category hit rate, the mean demand per intended category and the separation AUC of the
categories where small and strong models differ most from the rest (docs/router.md).
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

# A second set, written on 2026-12-01 before the content-based category labels were tried and
# scored only before and after that change (never used to choose between variants).
SPOT_CHECKS_B: list[tuple[str, str]] = [
    ("math", "What is 15% of 240?"),
    (
        "math",
        "A rectangle has a perimeter of 36 cm and its length is twice its width. Find its area.",
    ),
    ("math", "Integrate x * e^x with respect to x."),
    ("math", "Show that the square of any odd integer leaves remainder 1 when divided by 8."),
    (
        "math",
        "Tom buys 4 notebooks at $2.50 each and pays with a $20 bill. How much change does he get?",
    ),
    ("math", "What is the greatest common divisor of 84 and 126?"),
    ("math", "Find all real solutions of x^2 - 5x + 6 = 0."),
    ("code", "Write a JavaScript function that debounces another function."),
    ("code", "How do I read a CSV file into a pandas DataFrame and drop rows with missing values?"),
    (
        "code",
        "My Rust code fails with 'borrowed value does not live long enough'. What does that mean?",
    ),
    ("code", "Write a Dockerfile for a Flask app that listens on port 8000."),
    ("code", "Implement binary search in C++ and explain its complexity."),
    (
        "code",
        "Convert this loop to a list comprehension: result = []; for x in xs: if x > 0: result.append(x * 2)",
    ),
    ("code", "Write a regular expression that matches valid IPv4 addresses."),
    (
        "reasoning",
        "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than the ball. How much does the ball cost?",
    ),
    (
        "reasoning",
        "If all bloops are razzies and all razzies are lazzies, are all bloops definitely lazzies?",
    ),
    (
        "reasoning",
        "You have two ropes that each take an hour to burn, unevenly. How can you measure 45 minutes?",
    ),
    ("reasoning", "Which number comes next in the sequence 2, 6, 12, 20, 30?"),
    (
        "reasoning",
        "Five friends sit in a row. Ann is left of Ben, Ben is left of Cal, and Dee sits at the right end. Who could sit in the middle?",
    ),
    (
        "reasoning",
        "A farmer must cross a river with a wolf, a goat and a cabbage. His boat holds one item. How does he do it?",
    ),
    ("knowledge", "Who wrote 'Pride and Prejudice'?"),
    ("knowledge", "What is the difference between mitosis and meiosis?"),
    ("knowledge", "Why did the Roman Empire split into east and west?"),
    ("knowledge", "How do noise-cancelling headphones work?"),
    ("knowledge", "What does GDP measure, and what are its limitations?"),
    (
        "knowledge",
        "What is the boiling point of water at the top of Mount Everest, roughly, and why is it lower?",
    ),
    ("knowledge", "Explain the theory of plate tectonics."),
    ("writing", "Write a limerick about a cat who loves coffee."),
    ("writing", "Write a cover letter for a junior data analyst position."),
    ("writing", "Create a product description for a handmade leather wallet."),
    ("writing", "Write the opening paragraph of a mystery novel set in Venice."),
    ("writing", "Draft a short speech for my sister's wedding toast."),
    ("writing", "Write a LinkedIn post announcing that our startup raised its seed round."),
    ("chat", "Good morning! Any plans for the weekend?"),
    ("chat", "Tell me a joke about penguins."),
    ("chat", "Can you recommend a few sci-fi movies like Interstellar?"),
    ("chat", "Act as my personal trainer and motivate me to go for a run."),
    ("chat", "Thanks, that was really helpful!"),
    ("chat", "Translate 'where is the train station' into Spanish."),
    ("chat", "Summarise this review in five words: The food was cold and the waiter was rude."),
]


# A third set, written on 2026-12-03 (eight prompts per intended category, in the style of an
# open-chat benchmark: roleplay and extraction count as chat, open STEM and humanities
# questions as knowledge) and scored on the shipped artifact as it was, with no change made
# or chosen after it.
SPOT_CHECKS_C: list[tuple[str, str]] = [
    (
        "math",
        "A store discounts a jacket by 20% and then by another 15% off the reduced price. What single discount is equivalent?",
    ),
    ("math", "The sum of three consecutive even numbers is 78. What is the largest of them?"),
    ("math", "Evaluate the limit of (1 - cos x) / x^2 as x approaches 0, and justify each step."),
    ("math", "In how many ways can the letters of the word BANANA be arranged?"),
    ("math", "Let f(x) = 2x^2 - 3x + 1. Find the minimum value of f and the x at which it occurs."),
    (
        "math",
        "A tank fills in 6 hours with pipe A and in 9 hours with pipe B. How long with both pipes open together?",
    ),
    (
        "math",
        "Prove by induction that 1 + 3 + 5 + ... + (2n - 1) = n^2 for every positive integer n.",
    ),
    ("math", "What is the remainder when 7^100 is divided by 5?"),
    ("code", "Write a Go HTTP handler that returns the current server time as JSON."),
    (
        "code",
        "Given a linked list, write a function in Python that reverses it in place and returns the new head.",
    ),
    (
        "code",
        "What is the time complexity of inserting into a balanced binary search tree, and why?",
    ),
    (
        "code",
        "Refactor this JavaScript to use async/await instead of promise chains: fetch(url).then(r => r.json()).then(d => console.log(d)).catch(e => console.error(e))",
    ),
    (
        "code",
        "Write unit tests with pytest for a function is_palindrome(s) that ignores case and spaces.",
    ),
    (
        "code",
        "Design a class hierarchy in TypeScript for shapes that can compute their area and perimeter.",
    ),
    (
        "code",
        "Write a shell one-liner that counts the lines of every .py file in a directory tree and prints the total.",
    ),
    (
        "code",
        "Implement Dijkstra's shortest path algorithm for a graph given as an adjacency list.",
    ),
    (
        "reasoning",
        "Some cats are black. All black things absorb heat. Can we conclude that some cats absorb heat? Explain your reasoning.",
    ),
    (
        "reasoning",
        "There are three light switches outside a closed room with one bulb inside. You may enter the room once. How can you tell which switch controls the bulb?",
    ),
    (
        "reasoning",
        "If it takes five machines five minutes to make five widgets, how long would it take 100 machines to make 100 widgets?",
    ),
    (
        "reasoning",
        "Mary's father has five daughters: Nana, Nene, Nini, Nono. What is the name of the fifth daughter?",
    ),
    (
        "reasoning",
        "A is the father of B. B is the sister of C. C is the son of D. How is D related to A?",
    ),
    (
        "reasoning",
        "Four people need to cross a bridge at night with one torch. They take 1, 2, 5 and 10 minutes. At most two can cross at once. What is the shortest total time?",
    ),
    (
        "reasoning",
        "Is the following argument valid? If it rains, the street is wet. The street is wet. Therefore it rained.",
    ),
    (
        "reasoning",
        "In a village the barber shaves everyone who does not shave themselves. Who shaves the barber?",
    ),
    ("knowledge", "What causes the seasons on Earth?"),
    (
        "knowledge",
        "Explain the main differences between the Baroque and Classical periods in music.",
    ),
    ("knowledge", "What is the role of mitochondria in a cell?"),
    ("knowledge", "Describe the causes and consequences of the 2008 financial crisis."),
    ("knowledge", "How does public-key cryptography allow two strangers to communicate securely?"),
    ("knowledge", "What did the Treaty of Westphalia establish?"),
    ("knowledge", "Explain what inflation is and how central banks try to control it."),
    ("knowledge", "Why is the sky blue?"),
    ("writing", "Write a short motivational speech for a high school graduation."),
    ("writing", "Compose a haiku about a rainy Monday morning."),
    ("writing", "Write a product announcement email for our new noise-cancelling earbuds."),
    ("writing", "Write a two-paragraph fairy tale about a fox who wants to fly."),
    ("writing", "Draft a persuasive op-ed on why remote work is good for employees and companies."),
    (
        "writing",
        "Edit this sentence for grammar and flow: Me and him goes to the store yesterday for buying some food.",
    ),
    ("writing", "Write a heartfelt thank-you note to a teacher who changed my life."),
    ("writing", "Write song lyrics about leaving your hometown."),
    ("chat", "Hey, what's up?"),
    ("chat", "Imagine you are Sherlock Holmes. Introduce yourself to a new client."),
    ("chat", "What should I cook for dinner tonight? I have eggs, spinach and cheese."),
    ("chat", "Can you suggest a name for my new bakery?"),
    ("chat", "I'm feeling a bit stressed about exams. Any advice?"),
    (
        "chat",
        "Pull out every person's name from this sentence: Yesterday Maria met John and Aiko at the cafe.",
    ),
    ("chat", "Say something nice to cheer me up."),
    ("chat", "Rank these fruits by how much you like them: mango, kiwi, apple."),
]

# Between a small and a strong chat model the quality gap is widest on math, reasoning and
# code, and narrowest on open writing, chat and knowledge questions (MT-Bench's per-category
# scores): a router should rank the first group above the second.
HIGH_GAP = ("math", "code", "reasoning")


def separation_auc(intended: list[str], demand: list[float]) -> float:
    """P(a high-gap prompt scores above a low-gap one), ties counting half."""
    high = [d for i, d in zip(intended, demand, strict=True) if i in HIGH_GAP]
    low = [d for i, d in zip(intended, demand, strict=True) if i not in HIGH_GAP]
    wins = sum((h > lo) + 0.5 * (h == lo) for h in high for lo in low)
    return wins / (len(high) * len(low))


def main() -> None:
    """Print the table and the summary lines."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", default="static")
    parser.add_argument(
        "--set",
        choices=("a", "b", "c"),
        default="a",
        help="a: the first 40; b: the second 40; c: the 48 of 2026-12-03",
    )
    parser.add_argument("--artifact", default=None, help="artifact directory (default: shipped)")
    args = parser.parse_args()
    checks = {"a": SPOT_CHECKS, "b": SPOT_CHECKS_B, "c": SPOT_CHECKS_C}[args.set]
    router = Router.load(args.artifact, runtime=args.runtime, cache_size=0)
    estimates = router.estimate_batch([prompt for _, prompt in checks])
    demand: dict[str, list[float]] = defaultdict(list)
    hits = 0
    print("| intended | category | demand | p50/p90 | prompt |")
    print("|---|---|---|---|---|")
    for (intended, prompt), est in zip(checks, estimates, strict=True):
        hits += est.category == intended
        demand[intended].append(est.reasoning_demand)
        print(
            f"| {intended} | {est.category} | {est.reasoning_demand:.3f} | "
            f"{est.token_budget_p50}/{est.token_budget_p90} | {prompt[:70]} |"
        )
    print(f"\ncategory right: {hits} of {len(checks)}")
    means = sorted(((sum(v) / len(v), k) for k, v in demand.items()), reverse=True)
    print("mean demand by intended category: " + ", ".join(f"{k} {m:.2f}" for m, k in means))
    auc = separation_auc(
        [intended for intended, _ in checks], [e.reasoning_demand for e in estimates]
    )
    print(f"separation AUC ({', '.join(HIGH_GAP)} above the rest): {auc:.3f}")


if __name__ == "__main__":
    main()
