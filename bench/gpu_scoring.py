"""Scoring on a GPU: the padding-free loss + IFD pass and the shared-prefix choice pass against the
plain one-at-a-time loop, on a model of SmolLM2-135M's shape.

The GPU machine cannot reach the bundled model file, so the model is SmolLM2-135M's architecture
(Llama, 30 layers, hidden 576, vocabulary 49,152) with seeded random weights, and the sequences
are random token ids with GSM8K's measured length profile (prompt 90 ± 30, response 124 ± 60
tokens). Speed and agreement do not depend on what the weights learned; the scores themselves
mean nothing. One process, one prepared run:

    python bench/gpu_scoring.py --n 2000 --plain-n 300 --out $OUT/gpu_scoring.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tunewise.model.packed import (
    padding_share,
    plan_padded_chunks,
    sequence_logprobs,
    shared_prefix_logprobs,
)


def smollm2_shaped(dtype, device, layers=30):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.normal_(0, 0.05)
    return model.to(device=device, dtype=dtype).eval()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function):
    sync()
    start = time.perf_counter()
    result = function()
    sync()
    return result, time.perf_counter() - start


def matmul_roof(dtype, device, size=8192, repeats=10):
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(repeats)])
    return 2 * size**3 * repeats / seconds


def flops(model, tokens, context, projected):
    config = model.config
    decoder = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return (2 * decoder * tokens + 4 * config.num_hidden_layers * config.hidden_size * tokens * context
            + 2 * config.hidden_size * config.vocab_size * projected)


def plain_loop(model, prompts, responses, start_id):
    """One example at a time, full logits over every position: loss and response-alone loss."""
    device = next(model.parameters()).device
    results = []
    with torch.inference_mode():
        for prompt, response in zip(prompts, responses):
            ids = torch.tensor([prompt + response], device=device)
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
            loss = -logprobs[len(prompt) - 1:-1].gather(-1, ids[0, len(prompt):, None]).mean().item()
            alone = torch.tensor([[start_id] + response], device=device)
            logprobs = torch.log_softmax(model(alone).logits[0].float(), -1)
            loss_alone = -logprobs[:-1].gather(-1, alone[0, 1:, None]).mean().item()
            results.append((loss, loss_alone))
    return np.array(results)


def fused(model, prompts, responses, start_id, batch_tokens):
    sequences = [p + r for p, r in zip(prompts, responses)] + [[start_id] + r for r in responses]
    starts = [len(p) for p in prompts] + [1] * len(responses)
    values = sequence_logprobs(model, sequences, starts, 0, batch_tokens)
    means = np.array([-float(v.mean(dtype=np.float64)) for v in values])
    return np.stack([means[:len(prompts)], means[len(prompts):]], axis=1), sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--plain-n", type=int, default=300)
    parser.add_argument("--alone-n", type=int, default=100)
    parser.add_argument("--choice-items", type=int, default=1000)
    parser.add_argument("--batch-tokens", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=30, help="fewer only for a smoke run on a CPU")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu_scoring.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    prompt_lengths = np.clip(rng.normal(90, 30, args.n), 20, 400).astype(int)
    response_lengths = np.clip(rng.normal(124, 60, args.n), 5, 500).astype(int)
    prompts = [[int(x) for x in rng.integers(10, 49000, p)] for p in prompt_lengths]
    responses = [[int(x) for x in rng.integers(10, 49000, r)] for r in response_lengths]
    start_id = 1
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "n": args.n, "batch_tokens": args.batch_tokens, "rows": {}}
    import transformers

    report["transformers"] = transformers.__version__
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = smollm2_shaped(dtype, device, args.layers)
        fused(model, prompts[:64], responses[:64], start_id, args.batch_tokens)  # warm-up
        (scores, sequences), seconds = timed(lambda: fused(model, prompts, responses, start_id, args.batch_tokens))
        lengths = [len(s) for s in sequences]
        work = sum(flops(model, len(p) + len(r), (len(p) + len(r)) / 2, len(r)) + flops(model, len(r) + 1, (len(r) + 1) / 2, len(r))
                   for p, r in zip(prompts, responses))
        roof = matmul_roof(dtype, device, 8192 if device.type == "cuda" else 1024)
        plain_n = args.plain_n
        plain_loop(model, prompts[:4], responses[:4], start_id)  # warm-up
        plain, plain_seconds = timed(lambda: plain_loop(model, prompts[:plain_n], responses[:plain_n], start_id))
        plain_work = sum(flops(model, len(p) + len(r), (len(p) + len(r)) / 2, len(p) + len(r))
                         + flops(model, len(r) + 1, (len(r) + 1) / 2, len(r) + 1)
                         for p, r in zip(prompts[:plain_n], responses[:plain_n]))
        alone = np.array([fused(model, [p], [r], start_id, args.batch_tokens)[0][0]
                          for p, r in zip(prompts[:args.alone_n], responses[:args.alone_n])])
        row = {
            "examples_per_s": args.n / seconds, "seconds": seconds,
            "padding_share": padding_share(lengths, plan_padded_chunks(lengths, args.batch_tokens)),
            "flops_per_s": work / seconds, "roof_flops_per_s": roof, "fraction_of_roof": work / seconds / roof,
            "plain_examples_per_s": plain_n / plain_seconds, "plain_flops_per_s": plain_work / plain_seconds,
            "speed_over_plain": (args.n / seconds) / (plain_n / plain_seconds),
            "max_abs_diff_vs_plain": {"loss": float(np.abs(scores[:plain_n, 0] - plain[:, 0]).max()),
                                      "loss_alone": float(np.abs(scores[:plain_n, 1] - plain[:, 1]).max())},
            "max_abs_diff_batched_vs_alone": {"loss": float(np.abs(scores[:args.alone_n, 0] - alone[:, 0]).max()),
                                              "loss_alone": float(np.abs(scores[:args.alone_n, 1] - alone[:, 1]).max())},
        }
        # Multiple choice: 4 choices of 1-8 tokens after each prompt, packed against one forward
        # per (prompt, choice).
        items = [(prompts[i], [[int(x) for x in rng.integers(10, 49000, int(rng.integers(1, 9)))] for _ in range(4)])
                 for i in range(args.choice_items)]
        shared_prefix_logprobs(model, items[:16], 0, args.batch_tokens)  # warm-up
        packed, packed_seconds = timed(lambda: shared_prefix_logprobs(model, items, 0, args.batch_tokens))
        naive_n = min(200, len(items))

        def naive():
            sums = []
            with torch.inference_mode():
                for context, continuations in items[:naive_n]:
                    per = []
                    for c in continuations:
                        ids = torch.tensor([context + c], device=device)
                        logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
                        per.append(float(logprobs[len(context) - 1:-1].gather(-1, ids[0, len(context):, None]).sum()))
                    sums.append(per)
            return np.array(sums)

        reference, naive_seconds = timed(naive)
        packed_sums = np.array([[v.sum(dtype=np.float64) for v in per] for per in packed[:naive_n]])
        row["choice"] = {"items_per_s": len(items) / packed_seconds, "naive_items_per_s": naive_n / naive_seconds,
                         "speed_over_naive": (len(items) / packed_seconds) / (naive_n / naive_seconds),
                         "max_abs_diff_vs_naive": float(np.abs(packed_sums - reference).max()),
                         "same_prediction": float((packed_sums.argmax(1) == reference.argmax(1)).mean())}
        report["rows"][dtype_name] = row
        print(dtype_name, json.dumps(row, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
