"""Scoring throughput: tunewise's fused, token-batched pass against a plain one-at-a-time loop.

The plain loop is how the IFD scripts of Cherry_LLM / Superfiltering work: per example, a full
forward of prompt+response with logits over every position (loss), a forward of the response
alone (IFD), and ``model.generate`` for the greedy answer (confidence). Both run in this process
on the same examples; the achieved FLOP/s is compared with a dense matmul of the same dtype timed
in the same run (the machine's practical roof).

    python bench/score_throughput.py --n 500 --out bench/out/score_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

import realdata
from tunewise.model.hf import HFBackend
from tunewise.model.load import load_model
from tunewise.indicators.score import score_pool

INDICATORS = ("loss", "ifd", "confidence")


def mixed_examples(n: int, seed: int):
    """Half GSM8K, half T0 (spread over its tasks), deterministic."""
    gsm = realdata.gsm8k("train", limit=n // 2, seed=seed)
    t0 = realdata.t0(per_task=max(1, (n - len(gsm)) // 34 + 1), seed=seed)
    return gsm + t0[: n - len(gsm)]


def matmul_roof(dtype, size: int = 2048, repeats: int = 10) -> float:
    """Dense matmul FLOP/s: the practical roof for this dtype on this machine."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


class FlopModel:
    """Analytic FLOPs of a Llama-style decoder: 2·params per token plus attention and the head."""

    def __init__(self, model) -> None:
        config = model.config
        embedding = model.get_input_embeddings().weight.numel()
        self.decoder_params = sum(p.numel() for p in model.parameters()) - embedding
        self.head = 2 * config.hidden_size * config.vocab_size
        self.attention_per_pair = 4 * config.num_hidden_layers * config.hidden_size

    def forward(self, tokens: int, context: int, projected: int) -> float:
        return 2 * self.decoder_params * tokens + self.attention_per_pair * tokens * context + self.head * projected


def plain_loop(loaded, examples, max_new_tokens: int, flops: FlopModel, with_confidence: bool = True):
    """One example at a time, full logits, ``generate`` for the answer (confidence NaN without it)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    backend = HFBackend(loaded, max_new_tokens=max_new_tokens)
    stop_ids = backend._stop_ids.tolist()
    start_id = backend._start_id
    results, total_flops = [], 0.0
    with torch.inference_mode():
        for example in examples:
            prompt_ids = tokenizer.apply_chat_template(list(example.prompt), tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(example.response, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + response_ids])
            logits = model(ids).logits[0].float()
            start = len(prompt_ids)
            logprobs = torch.log_softmax(logits[start - 1:-1], -1).gather(-1, ids[0, start:, None])
            loss = -logprobs.mean().item()
            alone = torch.tensor([[start_id] + response_ids])
            logits_alone = model(alone).logits[0].float()
            loss_alone = -torch.log_softmax(logits_alone[:-1], -1).gather(-1, alone[0, 1:, None]).mean().item()
            p, r = len(prompt_ids), len(response_ids)
            total_flops += flops.forward(p + r, (p + r) / 2, p + r)
            total_flops += flops.forward(r + 1, (r + 1) / 2, r + 1)
            if not with_confidence:
                results.append((loss, float(np.exp(loss - loss_alone)), float("nan")))
                continue
            generated = model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                output_scores=True, return_dict_in_generate=True, eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            probabilities = [torch.softmax(s[0].float(), -1).max().item() for s in generated.scores]
            results.append((loss, float(np.exp(loss - loss_alone)), float(np.mean(probabilities))))
            g = len(generated.scores)
            total_flops += flops.forward(p, p / 2, 1) + sum(flops.forward(1, p + i, 1) for i in range(1, g))
    return np.array(results), total_flops


def fused_flops(backend, examples, confidences_steps, flops: FlopModel) -> float:
    """Analytic FLOPs of tunewise's scoring: the loss pass (prompt + response, head on response
    rows), the response alone (IFD), and for confidence a prompt prefill plus greedy steps."""
    encoded = backend.encode([e.prompt for e in examples], [e.response for e in examples])
    total = 0.0
    for e, g in zip(encoded, confidences_steps):
        p, r = e.prompt_length, e.response_length
        total += flops.forward(p + r, (p + r) / 2, r) + flops.forward(r + 1, (r + 1) / 2, r)
        total += flops.forward(p, p / 2, 0) + g * flops.head + sum(flops.forward(1, p + i, 0) for i in range(1, g))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/out/score_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = mixed_examples(args.n, args.seed)
    cache_dir = args.out.parent / "score_cache"
    import shutil

    shutil.rmtree(cache_dir, ignore_errors=True)
    report = {"n": len(examples), "machine": platform.processor() or platform.machine(),
              "threads": args.threads, "max_new_tokens": args.max_new_tokens, "rows": {}}

    loaded32 = load_model("smollm2", device="cpu", dtype="fp32")
    flops = FlopModel(loaded32.model)
    tokens = 0
    for dtype in ("fp32", "bf16"):
        loaded = loaded32 if dtype == "fp32" else load_model("smollm2", device="cpu", dtype=dtype)
        backend = HFBackend(loaded, max_new_tokens=args.max_new_tokens, max_batch_tokens=args.batch_tokens)
        start = time.perf_counter()
        scores = score_pool(examples, backend, INDICATORS, cache_dir=str(cache_dir / dtype))
        seconds = time.perf_counter() - start
        encoded = backend.encode([e.prompt for e in examples], [e.response for e in examples])
        tokens = sum(e.prompt_length + e.response_length for e in encoded)
        # Generated lengths are not stored; estimate each answer at the cap (an upper bound).
        work = fused_flops(backend, examples, [args.max_new_tokens] * len(examples), flops)
        roof = matmul_roof(loaded.dtype)
        report["rows"][f"tunewise {dtype}"] = {
            "seconds": seconds, "examples_per_s": len(examples) / seconds, "tokens_per_s": tokens / seconds,
            "flops_per_s": work / seconds, "roof_flops_per_s": roof, "fraction_of_roof": work / seconds / roof,
            "scores": scores[list(INDICATORS)].to_numpy().tolist(),
        }
        print(f"tunewise {dtype}: {len(examples) / seconds:.2f} examples/s, {tokens / seconds:.0f} tokens/s")
    if not args.skip_plain:
        start = time.perf_counter()
        plain, work = plain_loop(loaded32, examples, args.max_new_tokens, flops)
        seconds = time.perf_counter() - start
        roof = matmul_roof(torch.float32)
        report["rows"]["plain loop fp32"] = {
            "seconds": seconds, "examples_per_s": len(examples) / seconds, "tokens_per_s": tokens / seconds,
            "flops_per_s": work / seconds, "roof_flops_per_s": roof, "fraction_of_roof": work / seconds / roof,
            "scores": plain.tolist(),
        }
        print(f"plain fp32: {len(examples) / seconds:.2f} examples/s")
        fused32 = np.array(report["rows"]["tunewise fp32"]["scores"])
        bf16 = np.array(report["rows"]["tunewise bf16"]["scores"])
        report["comparison"] = {
            "speedup_fp32": report["rows"]["tunewise fp32"]["examples_per_s"] / report["rows"]["plain loop fp32"]["examples_per_s"],
            "speedup_bf16": report["rows"]["tunewise bf16"]["examples_per_s"] / report["rows"]["plain loop fp32"]["examples_per_s"],
            "max_abs_diff_fp32_vs_plain": {k: float(np.nanmax(np.abs(fused32[:, i] - plain[:, i]))) for i, k in enumerate(INDICATORS)},
            "spearman_bf16_vs_fp32": {k: float(spearmanr(bf16[:, i], fused32[:, i]).statistic) for i, k in enumerate(INDICATORS)},
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {k: v for k, v in report.items()}
    summary["rows"] = {k: {m: x for m, x in v.items() if m != "scores"} for k, v in report["rows"].items()}
    print(json.dumps(summary, indent=2))
    args.out.write_text(json.dumps(report))


if __name__ == "__main__":
    main()
