"""Per-layer kernels of a SmolLM2 LoRA training step on the CPU, fp32 against bf16, in CPU time.

One decoder layer's work for a micro-batch of 2 × 226 tokens (M = 452 rows): the seven base
projections (forward and input gradient), the rank-8 LoRA products, LoRA dropout (p = 0.05) on
each projection's input, the fp32 -> bf16 weight casts autocast makes, and attention forward +
backward (9 heads of 64, causal) through SDPA's CPU flash kernel, its math backend and a plain
matmul-softmax-matmul; and the 2048² matmul roof. Single-threaded, timed with process CPU time
so that shared cores distort it less.

    OMP_NUM_THREADS=1 nice -n 5 python bench/train_kernels.py
"""

import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

M = 452
# (in, out) of q, k, v, o, gate, up, down in SmolLM2-135M.
SHAPES = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]


def cpu_seconds(fn, repeats: int = 5) -> float:
    fn()
    started = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - started) / repeats


def measure(dtype) -> None:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    roof = 2 * 2048**3 / cpu_seconds(lambda: a @ b)
    inputs = {i: torch.randn(M, i, dtype=dtype) for i in (576, 1536)}
    weights = [torch.randn(o, i, dtype=dtype) for i, o in SHAPES]
    lora_a = [torch.randn(8, i, dtype=dtype) for i, _ in SHAPES]
    lora_b = [torch.randn(o, 8, dtype=dtype) for _, o in SHAPES]

    def base():
        for (i, _), w in zip(SHAPES, weights):
            (inputs[i] @ w.t()) @ w  # forward, then the input gradient (the base is frozen)

    def lora():
        for (i, _), a_, b_ in zip(SHAPES, lora_a, lora_b):
            x = inputs[i]
            h = x @ a_.t()
            y = h @ b_.t()
            gh = y @ b_
            y.t() @ h, gh @ a_, gh.t() @ x  # B's and A's weight gradients, the input gradient

    def dropout():
        for i, _ in SHAPES:
            F.dropout(inputs[i], 0.05, True)

    flops = sum(4 * M * i * o for i, o in SHAPES)
    base_s = cpu_seconds(base)
    print(f"{dtype}: 2048² roof {roof / 1e9:.0f} GFLOP/CPU-s; base projections {base_s * 1e3:.1f} ms "
          f"({flops / base_s / 1e9:.0f} GFLOP/CPU-s); LoRA products {cpu_seconds(lora) * 1e3:.1f} ms; "
          f"dropout {cpu_seconds(dropout) * 1e3:.1f} ms")
    if dtype == torch.bfloat16:
        fp32 = [torch.randn(o, i) for i, o in SHAPES]
        casts = cpu_seconds(lambda: [w.to(torch.bfloat16) for w in fp32])
        print(f"  autocast's weight casts {casts * 1e3:.1f} ms")
    q, k, v = (torch.randn(2, 9, 226, 64, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(226, 226, dtype=torch.bool).tril()

    def sdpa(backend):
        def run():
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
        return run

    def plain():
        scores = ((q @ k.transpose(-1, -2)) * 0.125).masked_fill(~mask, float("-inf"))
        (torch.softmax(scores, -1, dtype=torch.float32).to(dtype) @ v).sum().backward()

    print(f"  attention forward + backward: SDPA flash {cpu_seconds(sdpa(SDPBackend.FLASH_ATTENTION)) * 1e3:.1f} ms, "
          f"SDPA math {cpu_seconds(sdpa(SDPBackend.MATH)) * 1e3:.1f} ms, plain {cpu_seconds(plain) * 1e3:.1f} ms")


def main() -> None:
    torch.set_num_threads(1)
    for dtype in (torch.float32, torch.bfloat16):
        measure(dtype)


if __name__ == "__main__":
    main()
