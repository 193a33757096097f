"""How far the projected, bf16 CoS-Low lands from the exact fp32 value, on real tasks.

For each task, 32 labelled examples (seeded sample; the projection's error does not depend on how
they were chosen) go through the bundled model twice, one example at a time:

- fp32: the full ``lora_B`` gradients are kept (the exact CoS-Low), and each is also projected at
  several dimensions d with :func:`tunewise.model.gradients.sketch_gradient`;
- bf16 (the default dtype on a CPU with bf16 instructions): the full gradients again, and their
  projection at each d (what ``coslow`` computes by default).

It writes bench/out/coslow_projection.json with, per task and d, the median cosine and its error
against the exact fp32 median, and the largest error of a single pairwise cosine.

    TUNEWISE_THREADS=1 python bench/coslow_projection.py          # ~2 min per task on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
DATA = HERE.parent.parent / "shared" / "data"
DIMENSIONS = (2048, 4096, 8192, 16384, 32768, 65536)
BBH_TASKS = ("boolean_expressions", "navigate", "sports_understanding", "web_of_lies", "multistep_arithmetic_two")


def task_examples(seed: int) -> dict[str, list[tuple[list[dict], str]]]:
    """32 (prompt, answer) pairs of each of five BBH tasks (short answers keep a CPU run short)."""
    rng = random.Random(seed)
    tasks = {}
    for name in BBH_TASKS:
        rows = json.loads((DATA / "bbh" / "tasks" / f"{name}.json").read_text())["examples"]
        tasks[f"bbh/{name}"] = [([{"role": "user", "content": r["input"]}], r["target"]) for r in rng.sample(rows, 32)]
    return tasks


def gradients(loaded, examples, seed: int) -> list[list]:
    """Per example, the ``lora_B`` gradient blocks (fp32, CPU), as ``coslow`` takes them: the
    model interface's per-example gradients, unprojected, one block per adapted module."""
    from tunewise.model import as_backend

    prompts, responses = zip(*examples)
    vectors = as_backend(loaded).lora_gradients(list(prompts), list(responses), rank=64, alpha=32, seed=seed,
                                                blocks=True)
    try:
        return list(vectors)
    finally:
        vectors.close()


def cosines(examples: list[list]) -> list[float]:
    """Pairwise cosines of examples given as blocks, the Gram matrix summed block by block in fp64
    (stacking 32 full gradients at once would take gigabytes)."""
    import torch

    gram = None
    for blocks in zip(*examples):
        stacked = torch.stack([b.reshape(-1) for b in blocks]).double()
        gram = stacked @ stacked.T if gram is None else gram + stacked @ stacked.T
    norms = gram.diagonal().sqrt()
    gram = gram / norms[:, None] / norms[None, :]
    rows, columns = torch.triu_indices(len(examples), len(examples), offset=1)
    return gram[rows, columns].tolist()


def compare(exact: list[float], other: list[float]) -> dict:
    import numpy as np

    return {"median": float(np.median(other)), "median_error": float(np.median(other) - np.median(exact)),
            "max_pair_error": float(np.max(np.abs(np.subtract(other, exact))))}


def main() -> None:
    from tunewise.model.gradients import sketch_gradient
    from tunewise.model.load import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "out" / "coslow_projection.json")
    args = parser.parse_args()
    results = {"model": "smollm2", "seed": args.seed, "dimensions": list(DIMENSIONS), "tasks": {}}
    if args.output.exists():  # resume: a task already measured is kept
        results = json.loads(args.output.read_text())
    models = {dtype: load_model("smollm2", device="cpu", dtype=dtype) for dtype in ("fp32", "bf16")}
    for task, examples in task_examples(args.seed).items():
        if task in results["tasks"]:
            continue
        started = time.perf_counter()
        entry = {}
        exact = None
        for dtype, loaded in models.items():
            blocks = gradients(loaded, examples, args.seed)
            full = cosines(blocks)
            results["gradient_dimension"] = sum(b.numel() for b in blocks[0])
            if exact is None:
                exact = full
                entry["exact_fp32_median"] = compare(full, full)["median"]
            else:
                entry["bf16_full"] = compare(exact, full)
            for d in DIMENSIONS:
                projected = cosines([[sketch_gradient(example, d, args.seed)] for example in blocks])
                entry[f"{dtype}_d{d}"] = compare(exact, projected)
            del blocks
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["tasks"][task] = entry
        print(task, json.dumps(entry), flush=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
