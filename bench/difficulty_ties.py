"""Difficulty on GSM8K: how coarse each measure is, and whether the seed changes a difficulty window's picks.

Paper C measures difficulty by the reference chain of thought's length in tokens. tunewise's
``cot_length`` counts its lines instead, which on GSM8K takes a handful of values, so a window's
picks fall inside one large tie block. For 1,000 seeded GSM8K train rows this prints, per measure,
the number of distinct values and the largest tie block, and how many distinct selections a
``difficulty_window`` (c0 = 0.5, β = 0, 100 picks) makes over 5 seeds. It runs on the code it is
given (``PYTHONPATH``); measures that code does not know are skipped.

    PYTHONPATH=src python bench/difficulty_ties.py --out bench/out/difficulty_ties/after.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realdata import gsm8k  # noqa: E402

from tunewise.errors import TunewiseError  # noqa: E402
from tunewise.indicators.registry import cot_length  # noqa: E402
from tunewise.model.load import load_model  # noqa: E402
from tunewise.select import get_strategy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()

    examples = gsm8k("train", limit=args.rows, seed=0)
    tokenizer = load_model("smollm2", device="cpu").tokenizer
    scores = pd.DataFrame({
        "id": [e.id for e in examples],
        "task": "gsm8k",
        "cot_length": [cot_length(e.response) for e in examples],
        "length": [len(ids) for ids in tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]],
    })
    result = {"rows": len(scores), "budget": args.budget, "seeds": args.seeds, "measures": {}}
    for measure in ("cot_length", "length"):
        counts = scores[measure].value_counts()
        entry = {"distinct_values": int(len(counts)), "largest_tie_block": int(counts.max())}
        try:
            window = get_strategy("difficulty_window", difficulty=measure, c0=0.5, beta=0.0)
            selections = {tuple(sorted(window.select(scores, args.budget, seed=seed).positions.tolist()))
                          for seed in range(args.seeds)}
            entry["distinct_selections_over_seeds"] = len(selections)
        except TunewiseError as error:
            entry["distinct_selections_over_seeds"] = f"not available: {error.message}"
        result["measures"][measure] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
