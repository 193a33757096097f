"""The built-in example pool of ``tunewise demo``: five short-answer tasks, generated in code.

Each task is one a 135M instruct model can learn from tens of examples, with a ``level`` of
difficulty inside it (more digits, closer numbers, longer words) so that the difficulty window has
something to choose between. Answers are a few tokens long, so generating them is cheap.

Everything is derived from one seed: the same seed gives the same records, byte for byte. The
held-out test split shares no prompt with the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tunewise.errors import TunewiseError

DEMO_TASKS = ("addition", "larger_number", "parity", "uppercase", "first_letter")

# Common English words from 3 to 12 letters; a word's length is its difficulty level.
_WORDS = (
    "cat dog sun map cup pen box hat bed car egg fox jam key leg net owl pig rug toy van web yak zip "
    "bird fish tree road book lamp milk door ship star frog coat king wolf rain snow leaf ring "
    "apple chair river stone bread cloud grape house lemon mouse paper plant quiet robot sugar "
    "table tiger water zebra beach candy "
    "garden planet bridge castle dragon forest guitar island jacket kitten ladder magnet "
    "orange pencil rabbit silver summer turtle window yellow basket butter carpet "
    "balloon blanket cabinet chicken diamond dolphin feather giraffe harvest kitchen lantern "
    "mailbox monster pumpkin rainbow sandwich "
    "airplane backpack dinosaur elephant fountain hospital keyboard mountain notebook painting "
    "squirrel sunshine treasure umbrella whistle "
    "adventure astronaut butterfly chocolate crocodile furniture hamburger newspaper pineapple "
    "snowflake telephone waterfall "
    "basketball blackboard helicopter lighthouse microscope motorcycle playground strawberry "
    "television thunderstorm watermelon grasshopper "
).split()


def _addition(rng: random.Random) -> tuple[str, str, int]:
    digits = rng.randint(1, 3)
    a, b = (rng.randint(10 ** (digits - 1), 10**digits - 1) for _ in range(2))
    return f"What is {a} + {b}? Answer with the number only.", str(a + b), digits


def _larger_number(rng: random.Random) -> tuple[str, str, int]:
    digits = rng.randint(1, 4)
    a, b = rng.sample(range(10 ** (digits - 1), 10**digits), 2)
    return f"Which number is larger, {a} or {b}? Answer with the number only.", str(max(a, b)), digits


def _parity(rng: random.Random) -> tuple[str, str, int]:
    digits = rng.randint(1, 5)
    number = rng.randint(10 ** (digits - 1), 10**digits - 1)
    answer = "even" if number % 2 == 0 else "odd"
    return f"Is {number} even or odd? Answer with one word: even or odd.", answer, digits


def _uppercase(rng: random.Random) -> tuple[str, str, int]:
    word = rng.choice(_WORDS)
    return f"Write the word '{word}' in capital letters. Answer with the word only.", word.upper(), len(word)


def _first_letter(rng: random.Random) -> tuple[str, str, int]:
    word = rng.choice(_WORDS)
    return f"What is the first letter of the word '{word}'? Answer with the letter only.", word[0], len(word)


_GENERATORS: dict[str, Callable[[random.Random], tuple[str, str, int]]] = {
    "addition": _addition,
    "larger_number": _larger_number,
    "parity": _parity,
    "uppercase": _uppercase,
    "first_letter": _first_letter,
}


def demo_records(pool_per_task: int = 60, test_per_task: int = 20, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """The demo pool and its held-out test split, as ``{task, prompt, response, level}`` records.

    Each task gets ``pool_per_task`` pool records and ``test_per_task`` test records, every prompt
    distinct (the pool reader refuses duplicates, and a test prompt seen in training would flatter
    the fine-tune). Records are interleaved across tasks in the order they were drawn. Read them
    with ``read_pool(path, task_field="task")``.
    """
    rng = random.Random(seed)
    pool: list[dict] = []
    test: list[dict] = []
    for task in DEMO_TASKS:
        drawn = _distinct_draws(_GENERATORS[task], rng, pool_per_task + test_per_task, task)
        records = [{"task": task, "prompt": prompt, "response": answer, "level": level}
                   for prompt, answer, level in drawn]
        pool.extend(records[:pool_per_task])
        test.extend(records[pool_per_task:])
    return _interleave(pool), _interleave(test)


def _distinct_draws(generate, rng: random.Random, count: int, task: str) -> list[tuple[str, str, int]]:
    seen: dict[str, tuple[str, str, int]] = {}
    # Each task's prompt space is far larger than any sensible request; the attempt cap only turns
    # an impossible request into an error instead of an endless loop.
    for _ in range(count * 50):
        if len(seen) == count:
            break
        draw = generate(rng)
        seen.setdefault(draw[0], draw)
    if len(seen) < count:
        raise TunewiseError(f"task '{task}' of the demo pool cannot produce {count} distinct prompts",
                            fix="ask for fewer examples per task")
    return list(seen.values())


def _interleave(records: list[dict]) -> list[dict]:
    """Round-robin over tasks, so a file prefix (or ``--limit``) holds every task."""
    by_task: dict[str, list[dict]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    queues = list(by_task.values())
    longest = max((len(queue) for queue in queues), default=0)
    return [queue[i] for i in range(longest) for queue in queues if i < len(queue)]


__all__ = ["DEMO_TASKS", "demo_records"]
