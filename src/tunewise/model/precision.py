"""Which floating-point type a model computes in: ``--dtype auto|float32|bfloat16``.

``auto`` means bf16 wherever the hardware runs it natively: a CUDA device that supports bf16, or
a CPU with the AVX512-BF16 or AMX-BF16 instructions (on others, bf16 is emulated and slower than
fp32, so ``auto`` keeps fp32). ``float32`` and ``bfloat16`` are taken as asked. The training
commands compute in this type under mixed precision (fp32 master weights and optimiser state,
bf16 autocast for the matrix work), which is how transformers' ``Trainer`` runs ``bf16=True``.
"""

from __future__ import annotations

from pathlib import Path

from tunewise.errors import TunewiseError, did_you_mean

DTYPE_CHOICES = ("auto", "float32", "bfloat16")
_ALIASES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "auto": "auto"}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_runs_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has native bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in its flags).

    ``cpuinfo`` is the text of ``/proc/cpuinfo`` (read when not given); where that file does not
    exist (macOS, Windows), torch's own CPU capability check answers.
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if path.exists():
            cpuinfo = path.read_text(errors="replace")
    if cpuinfo is not None:
        flags = set()
        for line in cpuinfo.splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
        return any(flag in flags for flag in _CPU_BF16_FLAGS)
    import torch

    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check()) if check is not None else False


def device_runs_bf16(device) -> bool:
    """Whether ``device`` (a ``torch.device``) computes bf16 natively."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_runs_bf16()
    return False


def resolve_dtype(requested: str | None, device) -> str:
    """``"float32"`` or ``"bfloat16"``: the compute type for ``requested`` on ``device``.

    Raises :class:`~tunewise.errors.TunewiseError` (field ``dtype``) for a name that is not
    ``auto``, ``float32``/``fp32`` or ``bfloat16``/``bf16``.
    """
    name = _ALIASES.get(requested or "auto")
    if name is None:
        raise TunewiseError(f"unknown dtype '{requested}'", field="dtype", fix=did_you_mean(str(requested), DTYPE_CHOICES))
    if name == "auto":
        return "bfloat16" if device_runs_bf16(device) else "float32"
    return name


__all__ = ["DTYPE_CHOICES", "cpu_runs_bf16", "device_runs_bf16", "resolve_dtype"]
