"""Peak memory of scoring, CoS-Low, a LoRA fine-tune and `plan` against the bytes of the weights.

A randomly initialised Llama-architecture model is built in code (no download), saved as bf16
safetensors with tunewise's byte-level tokenizer, and each step runs the ``tunewise`` command line
in its own subprocess with default flags:

    score     tunewise score POOL --indicators loss,confidence
    coslow    tunewise coslow POOL --labelled POOL          (32 labelled examples)
    finetune  tunewise finetune POOL --max-steps 2
    plan      tunewise plan POOL --coslow --indicators loss,confidence

On a CPU the figure is the child's peak resident set (``os.wait4`` rusage, which counts the
memory-mapped weight pages it touched); on a GPU it is ``torch.cuda.max_memory_allocated`` read in
the child when it exits. ``--src`` runs the steps against another copy of tunewise's source (the
code before a change: ``git archive COMMIT src | tar -x -C /tmp/before``), so one table shows
before and after.

    python bench/memory.py build --shape 1b                      # ~2 GB in bench/out/memory/model-1b
    python bench/memory.py run --shape 1b --label after --steps score
    python bench/memory.py run --shape 1b --label before --src /tmp/before/src --steps score
    python bench/memory.py table --shape 1b                      # markdown, ratios to the weights' bytes

``--shape llama1b`` is Llama-3.2-1B whole, its 128,256-token vocabulary included, with a pool of
GSM8K-length answers: the shape on which the vocabulary projection's logits weigh what they weigh
in a real run (the ``1b`` shape's 260-token vocabulary hides them).

Run the 1B steps one at a time on a small shared machine: each holds the model in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = Path(os.environ.get("MEMORY_BENCH_OUT", HERE / "out" / "memory"))
STEPS = ("score", "coslow", "finetune", "plan")

# Llama-3.2-1B's and Llama-3.1-8B's shapes, with tunewise's 260-token byte-level vocabulary (the
# vocabulary changes nothing in what is measured beyond a few MB of embeddings).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),
    # Llama-3.2-1B whole: its 128,256-token vocabulary too (1.24 B parameters, 2.3 GiB of bf16), with
    # GSM8K-length answers, so the vocabulary projection's logits are as large as a real run's.
    "llama1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=128_256),
}
# Shapes whose pool has long answers (~150 tokens each: the scored tokens of a real pool).
LONG_ANSWERS = {"llama1b"}

# Runs the CLI in this process and, on a GPU, leaves its peak allocation behind for the parent.
CHILD = """
import atexit, json, os, sys
def _report():
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        with open(os.environ["MEMORY_BENCH_REPORT"], "w") as handle:
            json.dump({"cuda_max_allocated": int(torch.cuda.max_memory_allocated())}, handle)
atexit.register(_report)
sys.argv = ["tunewise"] + sys.argv[1:]
from tunewise.cli import main
main()
"""


def model_dir(shape: str) -> Path:
    return OUT / f"model-{shape}"


def pool_file(shape: str) -> Path:
    return model_dir(shape) / "pool.jsonl" if shape in LONG_ANSWERS else OUT / "pool.jsonl"


def worked_answer(a: int) -> str:
    """A GSM8K-length worked answer (~150 byte-level tokens)."""
    return (f"We start from {a} and add {a + 7}. Adding the tens first gives {a // 10 * 10 + (a + 7) // 10 * 10}, "
            f"then the units give {a % 10 + (a + 7) % 10}, so the total is {2 * a + 7}. #### {2 * a + 7}")


def build(shape: str, device: str) -> None:
    """Build the random model in bf16 directly (never an fp32 copy) and save it with a pool."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "src"))
    from tunewise.model.load import build_tiny_tokenizer

    target = model_dir(shape)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(**{"vocab_size": len(tokenizer), **SHAPES[shape]}, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    # One task of 32 labelled examples: CoS-Low's k, so `plan --coslow` measures it.
    lines = [json.dumps({"task": "addition", "prompt": f"What is {a} plus {a + 7}?",
                         "response": worked_answer(a) if shape in LONG_ANSWERS else str(2 * a + 7)})
             for a in range(32)]
    pool_file(shape).write_text("\n".join(lines) + "\n")
    weights = sum(p.stat().st_size for p in target.glob("*.safetensors"))
    print(f"built {target}: {weights / 2**30:.2f} GiB of bf16 weights")


def step_arguments(step: str, shape: str, work: Path, device: str) -> list[str]:
    model, pool = model_dir(shape), str(pool_file(shape))
    common = ["--model", str(model), "--device", device]
    if step == "score":
        return ["score", pool, *common, "--indicators", "loss,confidence", "--max-new-tokens", "4",
                "--cache-dir", str(work / "cache"), "-o", str(work / "scores.parquet")]
    if step == "coslow":
        return ["coslow", pool, "--labelled", pool, *common, "-o", str(work)]
    if step == "finetune":
        return ["finetune", pool, *common, "--max-steps", "2", "--batch-size", "2", "-o", str(work / "adapter")]
    if step == "plan":
        return ["plan", pool, *common, "--budget", "8", "--coslow", "--indicators", "loss,confidence",
                "--max-new-tokens", "4", "--cache-dir", str(work / "cache"), "-o", str(work / "run")]
    raise SystemExit(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


def run_step(step: str, shape: str, label: str, src: Path, device: str, timeout: float) -> dict:
    work = OUT / f"work-{shape}-{label}-{step}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    report = work / "cuda.json"
    env = {**os.environ, "PYTHONPATH": str(src), "MEMORY_BENCH_REPORT": str(report),
           "TUNEWISE_CACHE": str(work / "tunewise-cache")}
    arguments = step_arguments(step, shape, work, device)
    started = time.perf_counter()
    with open(work / "log.txt", "w") as log:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *arguments], env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    result = {
        "step": step, "shape": shape, "label": label, "device": device, "seconds": round(seconds, 1),
        "exit_code": os.waitstatus_to_exitcode(status), "timed_out": seconds > timeout,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # kilobytes on Linux
        "weights_bytes": sum(p.stat().st_size for p in model_dir(shape).glob("*.safetensors")),
        "command": "tunewise " + " ".join(arguments),
    }
    if report.exists():
        result.update(json.loads(report.read_text()))
    plan_file = work / "run" / "plan.json"
    if step == "plan" and plan_file.exists():
        # CoS-Low skips examples the model answers with no answer token (confidence 0), which a
        # random model may do: say whether the plan's figure includes CoS-Low at all.
        result["coslow_measured"] = bool(json.loads(plan_file.read_text()).get("coslow"))
    (OUT / f"result-{shape}-{label}-{step}.json").write_text(json.dumps(result, indent=2) + "\n")
    tail = (work / "log.txt").read_text()[-600:] if result["exit_code"] else ""
    print(json.dumps(result), tail, sep="\n" if tail else "")
    return result


def table(shape: str) -> str:
    results = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"result-{shape}-*.json"))]
    if not results:
        raise SystemExit(f"no results for shape {shape} in {OUT}")
    weights = results[0]["weights_bytes"]
    cuda = any("cuda_max_allocated" in r for r in results)
    header = "| step | label | peak RSS (GiB) | RSS × weights |"
    if cuda:
        header += " GPU peak (GiB) | GPU × weights |"
    lines = [f"bf16 weights: {weights / 2**30:.2f} GiB ({shape}-shaped Llama, random); peak RSS of the step's "
             "subprocess" + (" and its torch.cuda.max_memory_allocated" if cuda else ""), "",
             header + " seconds | exit |", "|---" * (header.count("|") + 1) + "|"]
    order = {step: i for i, step in enumerate(STEPS)}
    for r in sorted(results, key=lambda r: (order.get(r["step"], 9), r["label"] != "before", r["label"])):
        rss = r["peak_rss_bytes"]
        status = "timeout" if r["timed_out"] else {-9: "killed (OOM)"}.get(r["exit_code"], str(r["exit_code"]))
        row = f"| {r['step']} | {r['label']} | {rss / 2**30:.2f} | {rss / weights:.2f} |"
        if cuda:
            gpu = r.get("cuda_max_allocated")
            row += " - | - |" if gpu is None else f" {gpu / 2**30:.2f} | {gpu / weights:.2f} |"
        lines.append(row + f" {r['seconds']:.0f} | {status} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("--shape", choices=SHAPES, default="1b")
    build_parser.add_argument("--device", default="cpu", help="where to initialise the weights")
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--shape", choices=SHAPES, default="1b")
    run_parser.add_argument("--label", default="after")
    run_parser.add_argument("--src", type=Path, default=REPO / "src")
    run_parser.add_argument("--steps", default=",".join(STEPS))
    run_parser.add_argument("--device", default="cpu")
    run_parser.add_argument("--timeout", type=float, default=3600)
    table_parser = commands.add_parser("table")
    table_parser.add_argument("--shape", choices=SHAPES, default="1b")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.command == "build":
        build(args.shape, args.device)
    elif args.command == "run":
        for step in args.steps.split(","):
            run_step(step, args.shape, args.label, args.src.resolve(), args.device, args.timeout)
    else:
        print(table(args.shape))


if __name__ == "__main__":
    main()
