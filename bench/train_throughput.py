"""Fine-tuning throughput: the pre-TRL loop against TRL's SFTTrainer in fp32, bf16 and without padding.

Every variant fine-tunes SmolLM2 (LoRA r = 8, all linear layers, effective batch 4) on the same
GSM8K training examples for one epoch, then scores the same held-out GSM8K test examples by the
mean log-likelihood per gold-answer token (fp32 evaluation, so only the training precision
differs). Reported per variant, side by side in one run:

- tokens/s: real (non-padding) prompt + response tokens trained on, per second of training;
- achieved FLOP/s: the useful training FLOPs (analytic, below) per second, against a dense
  ``torch.matmul`` roof of the variant's compute dtype timed in the same run (before and after the
  variants, to show drift on shared cores);
- CPU time: the process's CPU-seconds (all threads) in training, against a matmul roof timed in
  CPU-seconds too; on shared cores it counts the work done rather than the time spent waiting;
- padding share: padded positions / all positions the model ran on;
- final training loss (mean over the last optimiser step) and the evaluation score.

Useful FLOPs of one example of T tokens with R response tokens, for LoRA (frozen base, so the
backward pass computes input gradients only; the adapters' own FLOPs are under 1 % and left out):
``4·P·T + 3·A(T) + 4·H·R``, where P is the decoder's parameter count without embeddings, A(T) the
causal attention score and value products ``4·L·d·T·T/2``, and H the head's ``d·V`` (only the
response positions need the head). Padding, and the head over prompt positions, are not useful.

The pre-TRL loop is read from git (``--legacy-commit``), so it runs unchanged beside the new code.
Run niced; on shared cores the load average is recorded with the figures.

    PYTHONPATH=src nice -n 5 python bench/train_throughput.py --threads 2 -o bench/out/train_throughput.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

from tunewise.model.load import load_model  # noqa: E402
from tunewise.training import finetune as _finetune_module  # noqa: E402

# The loss a TRL variant trains with: tunewise's completion-positions loss where it applies, or TRL's own.
LOSSES = {"tunewise": _finetune_module._completion_loss_applies, "trl": lambda trainer: False}
from tunewise.training.evaluate import evaluate  # noqa: E402

LEGACY_COMMIT = "f6913f3"
LEGACY_PATH = "src/tunewise/training/finetune.py"
# name -> (trainer, FinetuneConfig overrides)
VARIANTS = {
    "legacy-fp32": ("legacy", {}),
    "trl-fp32": ("trl", {"dtype": "float32", "batching": "random"}),
    "trl-bf16": ("trl", {"dtype": "bfloat16", "batching": "random"}),
    "trl-bf16-grouped": ("trl", {"dtype": "bfloat16", "batching": "group_by_length"}),
    "trl-bf16-padding-free": ("trl", {"dtype": "bfloat16", "batching": "padding_free"}),
    # Before issue 15's profile: TRL's own fused head, which on the CPU scores every position (prompt
    # and padding too) and folds entropy and top-1 statistics over the vocabulary into every step.
    "trl-fp32-fullhead": ("trl", {"dtype": "float32", "batching": "random", "loss": "trl"}),
    "trl-bf16-fullhead": ("trl", {"dtype": "bfloat16", "batching": "random", "loss": "trl"}),
    # What the LoRA dropout (0.05, the default) costs: its Bernoulli masks do not get faster in bf16.
    "trl-fp32-nodropout": ("trl", {"dtype": "float32", "batching": "random", "lora_dropout": 0.0}),
    "trl-bf16-nodropout": ("trl", {"dtype": "bfloat16", "batching": "random", "lora_dropout": 0.0}),
}


def matmul_roof(dtype, size: int = 2048, repeats: int = 8, clock=time.perf_counter) -> float:
    """Dense matmul FLOP/s of ``dtype``: the practical roof on this machine, now. With
    ``clock=time.process_time`` it is FLOPs per CPU-second (all threads together)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    start = clock()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (clock() - start)


def roofs(clock=time.perf_counter) -> dict:
    return {"float32": matmul_roof(torch.float32, clock=clock), "bfloat16": matmul_roof(torch.bfloat16, clock=clock)}


def useful_flops(model, lengths: list[tuple[int, int]]) -> float:
    """Training FLOPs of LoRA over (total tokens, response tokens) pairs; see the module docstring."""
    config = model.config
    embedding = model.get_input_embeddings().weight.numel()
    decoder = sum(p.numel() for p in model.parameters()) - embedding
    head = config.hidden_size * config.vocab_size
    pair = 4 * config.num_hidden_layers * config.hidden_size
    return sum(4 * decoder * t + 3 * pair * t * t / 2 + 4 * head * r for t, r in lengths)


def legacy_module(commit: str):
    """The pre-TRL ``finetune`` module as it was at ``commit``."""
    source = subprocess.run(["git", "show", f"{commit}:{LEGACY_PATH}"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "legacy_finetune.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("legacy_finetune", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def token_lengths(tokenizer, examples, max_seq_length: int) -> list[tuple[int, int]]:
    """(prompt + response tokens, response tokens) per example, as training encodes them."""
    lengths = []
    for example in examples:
        prompt = tokenizer.apply_chat_template([dict(t) for t in example.prompt], add_generation_prompt=True,
                                               tokenize=True, return_dict=True)["input_ids"]
        response = tokenizer(example.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        total = min(len(prompt) + len(response), max_seq_length)
        lengths.append((total, max(0, total - len(prompt))))
    return lengths


def run_variant(name, loaded, train, test, seed, legacy, args) -> dict:
    kind, overrides = VARIANTS[name]
    common = dict(lora_rank=8, lora_alpha=16.0, epochs=1, batch_size=args.batch_size,
                  gradient_accumulation_steps=args.accumulation, max_seq_length=args.max_seq_length, seed=seed)
    started = time.perf_counter()
    if kind == "legacy":
        cpu_started = time.process_time()
        result = legacy.finetune(loaded, train, legacy.FinetuneConfig(**common))
        cpu_seconds = time.process_time() - cpu_started
        log = result.log.to_dict()
        model = result.model
        train_seconds, positions = log["seconds"], None
        final_loss = log["final_loss"]
        cleanup = None
    else:
        import tunewise.training.finetune as finetune_module
        from tunewise.training.finetune import FinetuneConfig, finetune

        settings = dict(overrides)
        dtype = settings.pop("dtype")
        loss = settings.pop("loss", "tunewise")
        finetune_module._completion_loss_applies = LOSSES[loss]
        cpu_started = time.process_time()
        result = finetune(loaded, train, FinetuneConfig(**common, **settings), dtype=dtype)
        cpu_seconds = time.process_time() - cpu_started
        finetune_module._completion_loss_applies = LOSSES["tunewise"]
        log = result.log.to_dict()
        model = result.model
        train_seconds, positions = log["seconds"], log.get("positions_seen")
        final_loss = log["final_loss"]
        cleanup = result.release
    wall = time.perf_counter() - started
    scores = evaluate(model, loaded.tokenizer, test, metric="log_likelihood")
    if cleanup is not None:
        cleanup()
    return {"variant": name, "seed": seed, "train_seconds": train_seconds, "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "positions_seen": positions, "final_loss": final_loss, "eval_log_likelihood": scores["average"],
            "steps": len(log["steps"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--single-seed", default="legacy-fp32,trl-bf16-grouped,trl-bf16-padding-free",
                        help="Variants run with the first seed only (the others run every seed).")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--accumulation", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--legacy-commit", default=LEGACY_COMMIT)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/out/train_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    single = set(args.single_seed.split(","))

    loaded = load_model("smollm2", dtype="float32")
    train = realdata.gsm8k("train", limit=args.examples, seed=0)
    test = realdata.gsm8k("test", limit=args.eval_examples, seed=0)
    lengths = token_lengths(loaded.tokenizer, train, args.max_seq_length)
    flops = useful_flops(loaded.model, lengths)
    tokens = sum(t for t, _ in lengths)
    legacy = legacy_module(args.legacy_commit) if "legacy-fp32" in variants else None

    report = {"machine": os.uname().nodename, "cpu_count": os.cpu_count(), "threads": args.threads,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg(),
              "examples": len(train), "eval_examples": len(test), "tokens_per_epoch": tokens,
              "useful_flops_per_epoch": flops, "legacy_commit": args.legacy_commit,
              "roof_before": roofs(), "cpu_roof_before": roofs(time.process_time),
              "runs": []}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in variants:
            if seed != seeds[0] and name in single:
                continue
            run = run_variant(name, loaded, train, test, seed, legacy, args)
            run["load"] = os.getloadavg()[0]
            print(json.dumps(run), flush=True)
            report["runs"].append(run)
            # The roof again after every run, and the report so far: on shared cores a long run may
            # have to be stopped, and its finished variants still count.
            report["roof_after"] = roofs()
            report["cpu_roof_after"] = roofs(time.process_time)
            report["load_after"] = os.getloadavg()
            report["summary"] = summarise(report, variants)
            args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


def summarise(report: dict, variants: list[str]) -> dict:
    """Per variant: mean tokens/s, FLOP/s, fraction of its dtype's roof, loss and evaluation."""
    summary = {}
    for name in variants:
        runs = [r for r in report["runs"] if r["variant"] == name]
        if not runs:
            continue
        dtype = "float32" if "fp32" in name else "bfloat16"
        roof = max(report["roof_before"][dtype], report["roof_after"][dtype])
        seconds = sum(r["train_seconds"] for r in runs) / len(runs)
        cpu = [r["cpu_seconds"] for r in runs if r.get("cpu_seconds")]
        evals = [r["eval_log_likelihood"] for r in runs]
        entry = {
            "runs": len(runs),
            "tokens_per_second": report["tokens_per_epoch"] / seconds,
            "flops_per_second": report["useful_flops_per_epoch"] / seconds,
            "roof_flops_per_second": roof,
            "fraction_of_roof": report["useful_flops_per_epoch"] / seconds / roof,
            "final_loss": [r["final_loss"] for r in runs],
            "eval_log_likelihood": evals,
            "eval_spread": max(evals) - min(evals),
        }
        if cpu:
            # Process CPU time (all threads): on shared cores it counts the work, not the waiting.
            cpu_mean = sum(cpu) / len(cpu)
            entry["cpu_seconds"] = cpu_mean
            entry["tokens_per_cpu_second"] = report["tokens_per_epoch"] / cpu_mean
            cpu_roof = max(report["cpu_roof_before"][dtype], report["cpu_roof_after"][dtype])
            entry["cpu_roof_flops_per_cpu_second"] = cpu_roof
            entry["fraction_of_roof_by_cpu_time"] = report["useful_flops_per_epoch"] / cpu_mean / cpu_roof
        positions = [r["positions_seen"] for r in runs if r["positions_seen"]]
        if positions:
            entry["padding_share"] = 1 - report["tokens_per_epoch"] / (sum(positions) / len(positions))
        summary[name] = entry
    base = summary.get("legacy-fp32") or summary.get("trl-fp32")
    for entry in summary.values():
        if base:
            entry["speed_vs_fp32_baseline"] = entry["tokens_per_second"] / base["tokens_per_second"]
            if "tokens_per_cpu_second" in entry and "tokens_per_cpu_second" in base:
                entry["cpu_speed_vs_fp32_baseline"] = entry["tokens_per_cpu_second"] / base["tokens_per_cpu_second"]
    return summary


if __name__ == "__main__":
    main()
