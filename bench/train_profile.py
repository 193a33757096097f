"""Where a fine-tuning step's time goes: torch.profiler over a few optimiser steps of the real model.

Fine-tunes SmolLM2 (LoRA r = 8, batch 2 × 2, the bench/train_throughput.py recipe) on GSM8K
training examples for ``--steps`` optimiser steps, once per dtype, under ``torch.profiler``, and
reports per dtype: wall seconds, the self CPU time of the heaviest operators, and that time in
groups (matrix products, the language-model head and its loss, elementwise and dtype casts, the
optimiser, everything else). Each variant is a dtype and a loss: tunewise's completion-positions
loss (:func:`tunewise.training.finetune.completion_loss`) or TRL's own fused head, what tunewise
ran before. Variants are interleaved in rounds so that, on shared cores, ratios come from the same load.

    PYTHONPATH=src:bench nice -n 5 python bench/train_profile.py --threads 2 -o bench/out/train_profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

from tunewise.model.load import load_model  # noqa: E402
import tunewise.training.finetune as finetune_module  # noqa: E402
from tunewise.training.finetune import FinetuneConfig, finetune  # noqa: E402

# The loss a variant trains with: tunewise's completion-positions loss where it applies (the
# default), or TRL's own fused head over every position ("trl", what tunewise ran before).
LOSSES = {"tunewise": finetune_module._completion_loss_applies, "trl": lambda trainer: False}

# Operator name -> group, first match wins (substring of the profiler's key).
GROUPS = (
    ("optimizer", ("Optimizer.", "adam", "_foreach", "clip_grad", "norm")),
    ("lm head + loss", ("ChunkedLogProb", "cross_entropy", "log_softmax", "nll_loss", "logsumexp")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn", "onednn")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("cast/copy", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(key.lower() in lowered for key in keys):
            return group
    return "other"


def profile_once(loaded, examples, dtype: str, loss: str, steps: int, batching: str) -> dict:
    finetune_module._completion_loss_applies = LOSSES[loss]
    config = FinetuneConfig(lora_rank=8, lora_alpha=16.0, batch_size=2, gradient_accumulation_steps=2,
                            max_steps=steps, seed=0, batching=batching)
    activities = [torch.profiler.ProfilerActivity.CPU]
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.profiler.profile(activities=activities) as prof:
        with finetune(loaded, examples, config, dtype=dtype) as result:
            log = result.log.to_dict()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    events = prof.key_averages()
    ops = sorted(({"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "total_s": e.cpu_time_total / 1e6,
                   "calls": e.count} for e in events), key=lambda r: -r["self_s"])
    groups: dict[str, float] = defaultdict(float)
    for row in ops:
        groups[group_of(row["op"])] += row["self_s"]
    # Inclusive times of the autograd functions and phases that contain many operators.
    inclusive = {r["op"]: r["total_s"] for r in ops
                 if any(k in r["op"] for k in ("ChunkedLogProb", "Optimizer.step", "autograd::engine::evaluate_function: ChunkedLogProb"))}
    return {"dtype": dtype, "loss": loss, "batching": batching, "steps": steps, "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "train_s": log["seconds"], "tokens_seen": log["tokens_seen"], "positions_seen": log["positions_seen"],
            "tokens_per_s": round(log["tokens_seen"] / log["seconds"], 2), "losses": [s["loss"] for s in log["steps"]],
            "self_s_total": round(sum(r["self_s"] for r in ops), 3),
            "groups": {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "inclusive": {k: round(v, 3) for k, v in inclusive.items()},
            "top_ops": [{**r, "self_s": round(r["self_s"], 3), "total_s": round(r["total_s"], 3)} for r in ops[:25]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--variants", default="float32:trl,bfloat16:trl,float32:tunewise,bfloat16:tunewise",
                        help="dtype:loss pairs, run in this order in every round (loss: trl or tunewise).")
    parser.add_argument("--batching", default="group_by_length")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/out/train_profile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2", dtype="float32")
    examples = realdata.gsm8k("train", limit=args.examples, seed=0)
    report = {"machine": os.uname().nodename, "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "load_before": os.getloadavg(), "runs": []}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(args.rounds):
        for variant in args.variants.split(","):
            dtype, loss = variant.split(":")
            run = profile_once(loaded, examples, dtype, loss, args.steps, args.batching)
            run["load"] = os.getloadavg()[0]
            report["runs"].append(run)
            print(json.dumps({k: run[k] for k in ("dtype", "loss", "train_s", "cpu_s", "tokens_per_s", "groups", "inclusive")}),
                  flush=True)
            args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
