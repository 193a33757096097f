"""Model backends, loaded lazily by name so that importing tunewise never imports torch."""

from __future__ import annotations

from tunewise.backends.base import Backend, EncodedExample, Generation, plan_batches


def load_backend(
    model: str = "smollm2",
    device: str | None = None,
    dtype: str | None = None,
    max_new_tokens: int = 32,
    max_batch_tokens: int | None = None,
) -> Backend:
    """The backend for a model name: ``fake`` (tests, no torch), or any name ``load_model`` knows."""
    if model == "fake":
        from tunewise.backends.fake import FakeBackend

        return FakeBackend(max_new_tokens=max_new_tokens)
    from tunewise.backends.hf import HFBackend
    from tunewise.models import load_model

    return HFBackend(load_model(model, device=device, dtype=dtype), max_new_tokens, max_batch_tokens)


__all__ = ["Backend", "EncodedExample", "Generation", "load_backend", "plan_batches"]
