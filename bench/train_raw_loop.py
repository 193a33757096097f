"""The bare LoRA training loop, no trainer: what bf16 autocast buys a forward + backward + AdamW on the CPU.

LoRA r = 8 on every linear layer of SmolLM2, the first 12 GSM8K training examples in padded
micro-batches of 2, AdamW every 2 micro-batches, the loss :func:`tunewise.training.finetune.completion_loss`;
fp32 and bf16 autocast alternate for two rounds, with LoRA dropout 0.05 (tunewise's default) and
0.0 (PEFT's). Reports the process CPU time per pass (robust to shared cores) and the bf16/fp32
ratio of the best of each. Compare with bench/train_throughput.py to see what the trainer adds.
With ``attention`` as the second argument it instead compares, in bf16 with dropout 0.05 and
without the optimiser, SDPA attention against transformers' eager attention over three rounds.

    PYTHONPATH=src:bench nice -n 5 python bench/train_raw_loop.py 1 [attention]
"""

import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
import realdata  # noqa: E402

from tunewise.model.chat import encode_example, pad_examples  # noqa: E402
from tunewise.model.load import load_model  # noqa: E402
from tunewise.training.finetune import completion_loss  # noqa: E402


def batches_of(loaded):
    examples = realdata.gsm8k("train", limit=12, seed=0)
    encoded = [encode_example(loaded.tokenizer, e.prompt, e.response, 512) for e in examples]
    batches = []
    for i in range(0, len(encoded), 2):
        ids, mask, labels = pad_examples(encoded[i:i + 2], loaded.tokenizer.pad_token_id)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches, sum(len(e.input_ids) for e in encoded)


def attention(loaded) -> None:
    batches, _ = batches_of(loaded)
    model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                                    target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    seconds: dict = {}
    for _ in range(3):
        for implementation in ("sdpa", "eager"):
            loaded.model.set_attn_implementation(implementation)
            started = time.process_time()
            losses = []
            for batch in batches:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = completion_loss(model, batch)
                loss.backward()
                losses.append(round(loss.item(), 4))
            spent = time.process_time() - started
            seconds.setdefault(implementation, []).append(spent)
            print(f"bf16 {implementation}: {spent:.2f} CPU-s, first losses {losses[:3]}", flush=True)
    print(f"eager / sdpa CPU time (best of 3): {min(seconds['eager']) / min(seconds['sdpa']):.2f}")


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    loaded = load_model("smollm2", dtype="float32")
    batches, tokens = batches_of(loaded)
    seconds: dict = {}
    for dropout in (0.05, 0.0):
        model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                        target_modules="all-linear", task_type="CAUSAL_LM"))
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for _ in range(2):
            for dtype in ("float32", "bfloat16"):
                started = time.process_time()
                for j, batch in enumerate(batches):
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                        loss = completion_loss(model, batch)
                    loss.backward()
                    if j % 2 == 1:
                        optimizer.step()
                        optimizer.zero_grad()
                spent = time.process_time() - started
                seconds.setdefault((dropout, dtype), []).append(spent)
                print(f"dropout {dropout} {dtype}: {spent:.2f} CPU-s, {tokens / spent:.1f} tokens/CPU-s", flush=True)
        model.unload()
    for dropout in (0.05, 0.0):
        ratio = min(seconds[(dropout, "float32")]) / min(seconds[(dropout, "bfloat16")])
        print(f"dropout {dropout}: bf16 / fp32 by CPU time (best of 2) {ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[2:] == ["attention"]:
        torch.set_num_threads(int(sys.argv[1]))
        attention(load_model("smollm2", dtype="float32"))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
