"""CoS-Low's per-example LoRA gradients: one example per pass (paper A) against batched passes.

The same 32 examples of one BBH task (seeded sample) go through the bundled SmolLM2 once per
variant, in one run: ``per_example`` (``LoraGradients(batched=False)``, one forward and backward
pass per example) and ``batched`` at each token budget (length-sorted batches, one pass each, the
per-example gradients formed from hooks on every ``lora_B``). Each variant runs in a fresh
process so that its peak resident memory is its own; the seconds are those of the gradients alone
(model loading left out); on shared cores the CPU seconds are the steadier figure. Reported per
variant: wall and CPU seconds, their speed-ups over ``per_example``, peak RSS,
and against ``per_example`` the largest absolute difference of a projected (or full) vector
entry, the smallest cosine between an example's two vectors, the largest relative difference of
a gradient norm, and the CoS-Low of both; in bf16 also each path's smallest cosine against the
fp32 per-example vectors.

    TUNEWISE_THREADS=1 OMP_NUM_THREADS=1 nice -n 5 python bench/coslow_speed.py --task navigate
    TUNEWISE_THREADS=1 OMP_NUM_THREADS=1 nice -n 5 python bench/coslow_speed.py --task demo --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
DATA = HERE.parent.parent / "shared" / "data"


def examples(task: str, count: int, seed: int) -> list[tuple[list, list]]:
    """``(prompts, responses)`` groups, one CoS-Low call each: ``count`` examples of a BBH task, or
    with ``task="demo"`` the first ``count`` pool examples of each of ``tunewise demo``'s five tasks
    (the demo's CoS-Low stage: 5 × 32 gradients)."""
    if task == "demo":
        from tunewise.data.demo import DEMO_TASKS, demo_records

        pool, _ = demo_records()
        groups = [[r for r in pool if r["task"] == name][:count] for name in DEMO_TASKS]
        return [([[{"role": "user", "content": r["prompt"]}] for r in group], [r["response"] for r in group])
                for group in groups]
    rows = json.loads((DATA / "bbh" / "tasks" / f"{task}.json").read_text())["examples"]
    chosen = random.Random(seed).sample(rows, count)
    return [([[{"role": "user", "content": r["input"]}] for r in chosen], [r["target"] for r in chosen])]


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def run_variant(args) -> None:
    """One variant in this process: gradients, seconds and peak memory saved to ``args.save``."""
    import torch

    from tunewise.model.gradients import LoraGradients
    from tunewise.model.load import load_model

    loaded = load_model("smollm2", device="cpu", dtype="fp32" if args.variant == "fp32_reference" else args.dtype)
    groups = examples(args.task, args.count, args.seed)
    loaded_rss = resident_bytes()
    started, cpu_started = time.perf_counter(), time.process_time()
    vectors, norms = [], []
    for prompts, responses in groups:
        iterator = LoraGradients(loaded.model, loaded.tokenizer, prompts, responses, seed=args.seed,
                                 dimension=args.dimension or None, batched=args.variant.startswith("batched"),
                                 max_batch_tokens=args.budget or None)
        vectors += list(iterator)
        norms += iterator.norms
    vectors = torch.stack(vectors)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    torch.save({"vectors": vectors, "norms": norms, "seconds": seconds, "cpu_seconds": cpu_seconds,
                "loaded_rss": loaded_rss, "per_example_reason": iterator.per_example_reason,
                "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gradient_dimension": iterator.gradient_dimension}, args.save)


def coslow_of(vectors) -> float:
    import torch

    """The median pairwise cosine of ``vectors`` (of all of them together for the demo's tasks)."""
    units = vectors.double() / vectors.double().norm(dim=1, keepdim=True)
    gram = units @ units.T
    return float(gram[tuple(torch.triu_indices(len(units), len(units), offset=1))].median())


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="navigate",
                        help="BBH task under ../shared/data/bbh/tasks, or demo (the demo's five tasks)")
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--dimension", type=int, default=16384, help="projection; 0 compares the full gradients")
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[512])
    parser.add_argument("-o", "--output", type=Path, default=HERE / "out" / "coslow_speed.json")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        run_variant(args)
        return
    variants = [("per_example", 0)] + [(f"batched_{budget}", budget) for budget in args.batch_tokens]
    if args.dtype != "fp32":  # how far either path's low precision lands from fp32
        variants.append(("fp32_reference", 0))
    common = ["--task", args.task, "--count", str(args.count), "--seed", str(args.seed), "--dtype", args.dtype,
              "--dimension", str(args.dimension)]
    results: dict = {"task": args.task if args.task == "demo" else f"bbh/{args.task}", "count": args.count,
                     "dtype": args.dtype,
                     "dimension": args.dimension or None, "threads": os.environ.get("TUNEWISE_THREADS"),
                     "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "variants": {}}
    measured = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, budget in variants:
            save = Path(folder) / f"{name}.pt"
            subprocess.run([sys.executable, __file__, *common, "--variant", name, "--budget", str(budget),
                            "--save", str(save)], check=True)
            measured[name] = torch.load(save)
    reference = measured["per_example"]
    results["gradient_dimension"] = reference["gradient_dimension"]
    exact = measured.pop("fp32_reference", None)
    for name, run in measured.items():
        vectors, expected = run["vectors"], reference["vectors"]
        cosine = torch.nn.functional.cosine_similarity(vectors.double(), expected.double(), dim=1)
        norms = torch.tensor(run["norms"], dtype=torch.float64)
        expected_norms = torch.tensor(reference["norms"], dtype=torch.float64)
        results["variants"][name] = {
            "seconds": round(run["seconds"], 2),
            "speedup": round(reference["seconds"] / run["seconds"], 2),
            "cpu_seconds": round(run["cpu_seconds"], 2),
            "cpu_speedup": round(reference["cpu_seconds"] / run["cpu_seconds"], 2),
            "per_example_reason": run["per_example_reason"],
            "peak_rss_gib": round(run["peak_rss"] / 2**30, 3),
            "rss_after_load_gib": round(run["loaded_rss"] / 2**30, 3),
            "max_abs_difference": float((vectors - expected).abs().max()),
            "max_abs_entry": float(expected.abs().max()),
            "min_cosine": float(cosine.min()),
            "max_norm_relative_difference": float(((norms - expected_norms).abs() / expected_norms).max()),
            "coslow": coslow_of(vectors),
        }
        if exact is not None:
            results["variants"][name]["min_cosine_vs_fp32"] = float(torch.nn.functional.cosine_similarity(
                vectors.double(), exact["vectors"].double(), dim=1).min())
            results["variants"][name]["coslow_fp32"] = coslow_of(exact["vectors"])
        print(name, json.dumps(results["variants"][name]), flush=True)
    results["load_average_after"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
