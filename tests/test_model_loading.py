"""Loading a model straight into its dtype, with the options large models need, and one copy per run."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tunewise.errors import TunewiseError
from tunewise.model.load import LoadOptions

# -- options -------------------------------------------------------------------------------------


def test_load_options_travel_through_the_environment(monkeypatch):
    options = LoadOptions(quantization="4bit", device_map="auto", attn_implementation="sdpa", revision="v1",
                          trust_remote_code=True)
    for variable, value in options.to_environment().items():
        monkeypatch.setenv(variable, value)
    assert LoadOptions.from_environment() == options
    assert LoadOptions().to_environment() == {}
    assert options.fingerprint_suffix() == ":4bit:rev-v1" and LoadOptions().fingerprint_suffix() == ""


def test_the_cli_refuses_both_quantisations(capsys):
    from tunewise.cli import main

    with pytest.raises(SystemExit) as exited:
        import sys

        sys.argv = ["tunewise", "--load-in-4bit", "--load-in-8bit", "score", "pool.jsonl", "-o", "x.parquet"]
        main()
    assert exited.value.code == 2
    assert "exclude each other" in capsys.readouterr().err


# -- dtype -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """The tiny random model saved in float32, as a model folder."""
    from tunewise.model.load import load_model

    folder = tmp_path_factory.mktemp("tiny-model")
    loaded = load_model("tiny-random", device="cpu", dtype="fp32")
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.integration
@pytest.mark.parametrize("dtype, expected", [("bf16", "bfloat16"), ("fp32", "float32"), ("fp16", "float16")])
def test_every_parameter_is_in_the_asked_dtype_read_straight_into_it(tiny_folder, monkeypatch, dtype, expected):
    import torch
    from transformers import AutoModelForCausalLM

    from tunewise.model.load import load_model

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    loaded = load_model(str(tiny_folder), device="cpu", dtype=dtype, options=LoadOptions())
    wanted = getattr(torch, expected)
    assert {p.dtype for p in loaded.model.parameters()} == {wanted}
    assert {b.dtype for b in loaded.model.buffers() if b.is_floating_point()} <= {wanted, torch.float32}
    # The weights are read into the dtype and onto the device: no float32 model is made first.
    assert len(calls) == 1 and calls[0]["dtype"] == wanted and calls[0]["device_map"] == {"": torch.device("cpu")}
    assert calls[0]["trust_remote_code"] is False
    assert loaded.fingerprint.endswith(":" + expected)


def test_auto_dtype_follows_the_hardware(monkeypatch):
    import torch

    from tunewise.model import load

    monkeypatch.setattr(load, "cpu_has_bf16", lambda: True)
    assert load.choose_dtype("auto", torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(load, "cpu_has_bf16", lambda: False)
    assert load.choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert load.choose_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert load.choose_dtype("fp32", torch.device("cuda")) == torch.float32
    with pytest.raises(TunewiseError, match="unknown dtype"):
        load.choose_dtype("bf61", torch.device("cpu"))


# -- the Hub ---------------------------------------------------------------------------------------


def test_an_uncached_hub_model_offline_says_how_to_get_it(monkeypatch, tmp_path):
    from tunewise.model.load import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TunewiseError, match="not in the local Hugging Face cache") as raised:
        load_model("nobody-here/no-such-model", device="cpu", options=LoadOptions(revision="main"))
    assert "hf download nobody-here/no-such-model --revision main" in raised.value.fix


def test_a_name_without_an_organisation_is_never_sent_to_the_hub(monkeypatch, tmp_path):
    from tunewise.model.load import load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))

    def no_network(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            raise AssertionError("the Hub was asked")
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("not cached")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_network)
    with pytest.raises(TunewiseError, match="unknown model 'smolm2'") as raised:
        load_model("smolm2", device="cpu")
    assert "smollm2" in raised.value.fix


# -- quantisation ----------------------------------------------------------------------------------


def test_quantisation_without_bitsandbytes_is_refused(monkeypatch):
    import torch

    from tunewise.model import load

    real = importlib.util.find_spec
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(TunewiseError, match="needs bitsandbytes") as raised:
        load._quantization_config("4bit", torch.device("cpu"), torch.bfloat16)
    assert "tunewise[quant]" in raised.value.fix


needs_bitsandbytes = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                                        reason="bitsandbytes is not installed (pip install 'tunewise[quant]')")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """A random Llama wide enough for bitsandbytes' CPU kernels (64-wide blocks), as a model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tunewise.model.load import build_tiny_tokenizer

    folder = tmp_path_factory.mktemp("small-model")
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.integration
@needs_bitsandbytes
def test_a_4bit_model_scores_and_gives_coslow_gradients(small_folder):
    import torch

    from tunewise.efficiency.coslow import coslow
    from tunewise.model.hf import HFBackend
    from tunewise.model.load import load_model

    loaded = load_model(str(small_folder), device="cpu", dtype="bf16", options=LoadOptions(quantization="4bit"))
    kinds = {type(m).__name__ for m in loaded.model.modules()}
    assert "Linear4bit" in kinds and loaded.fingerprint.endswith(":bfloat16:4bit")
    backend = HFBackend(loaded, max_new_tokens=4)
    scored = backend.score_batch(backend.encode([[{"role": "user", "content": "What is 1 plus 2?"}]], ["3"]),
                                 {"loss", "confidence"})
    assert scored["loss"][0] > 0 and not scored["confidence"][0] > 1  # 0 or NaN when it answers only stop tokens
    prompts = [[{"role": "user", "content": f"What is {i} plus 2?"}] for i in range(4)]
    result = coslow(loaded.model, loaded.tokenizer, prompts, [str(i + 2) for i in range(4)], dimension=1024)
    assert -1 <= result["coslow"] <= 1 and result["dimension"] == 1024
    # Batched gradients run through the 4-bit layers too, and agree with one example per pass.
    from tunewise.model.gradients import LoraGradients

    answers = [str(i + 2) + " ok" * (i % 2) for i in range(4)]
    batched = LoraGradients(loaded.model, loaded.tokenizer, prompts, answers, dimension=256)
    one_by_one = LoraGradients(loaded.model, loaded.tokenizer, prompts, answers, dimension=256, batched=False)
    assert batched.per_example_reason is None
    assert all(float((b - o).norm() / o.norm()) <= 1e-5 for b, o in zip(list(batched), list(one_by_one)))
    assert "Linear4bit" in {type(m).__name__ for m in loaded.model.modules()}
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())
    assert all(p.dtype in (torch.bfloat16, torch.uint8) for p in loaded.model.parameters())


# -- one copy of the weights per run -------------------------------------------------------------


@pytest.mark.integration
def test_plan_with_coslow_loads_the_model_once_and_keeps_its_weights_in_place(tmp_path, monkeypatch):
    from tunewise.data.pool import read_pool
    from tunewise.model import load as load_module
    from tunewise.model import load_backend
    from tunewise.run import PlanConfig, plan

    pool_file = tmp_path / "pool.jsonl"
    pool_file.write_text("".join(json.dumps({"task": "add", "prompt": f"What is {i} plus {i + 4}?",
                                             "response": str(2 * i + 4)}) + "\n" for i in range(32)))
    loads, storages = [], []
    real_load = load_module.load_model

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loads.append(loaded)
        storages.append({name: p.data_ptr() for name, p in loaded.model.named_parameters()})
        return loaded

    monkeypatch.setattr(load_module, "load_model", counting_load)
    from tunewise.indicators import score as score_module

    real_score = score_module.score_pool

    def positive_confidence(*args, **kwargs):
        # The random model answers with a stop token at once (confidence 0), which CoS-Low skips.
        scores = real_score(*args, **kwargs)
        scores["confidence"] = [0.1 + 0.02 * i for i in range(len(scores))]
        return scores

    monkeypatch.setattr(score_module, "score_pool", positive_confidence)
    backend = load_backend("tiny-random", device="cpu", dtype="bf16", max_new_tokens=4)
    config = PlanConfig(budget=8, strategy="task_diversity", coslow=True, indicators=("loss", "confidence"),
                        cache_dir=tmp_path / "cache")
    result = plan(read_pool(pool_file, "task"), backend, config, tmp_path / "run", model_name="tiny-random")
    assert result.document["coslow"]["add"]["k"] == 32
    assert len(loads) == 1
    model = loads[0].model
    assert {name: p.data_ptr() for name, p in model.named_parameters()} == storages[0]
    assert not any("lora_" in name for name, _ in model.named_parameters())


@pytest.mark.integration
@needs_bitsandbytes
def test_a_4bit_model_fine_tunes_end_to_end(small_folder, tmp_path):
    import math

    from tunewise.data.pool import parse_record
    from tunewise.model.load import load_model
    from tunewise.training.finetune import FinetuneConfig, finetune

    loaded = load_model(str(small_folder), device="cpu", dtype="bf16", options=LoadOptions(quantization="4bit"))
    examples = [parse_record({"prompt": f"What is {i} plus 2?", "response": str(i + 2)}) for i in range(6)]
    result = finetune(loaded, examples, FinetuneConfig(max_steps=2, batch_size=2), output_dir=tmp_path / "adapter")
    losses = [step["loss"] for step in result.log.to_dict()["steps"]]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    assert "Linear4bit" in {type(m).__name__ for m in loaded.model.modules()}


@pytest.mark.integration
@needs_bitsandbytes
def test_an_8bit_model_scores_and_fine_tunes(small_folder, tmp_path):
    import math

    from tunewise.data.pool import parse_record
    from tunewise.model.hf import HFBackend
    from tunewise.model.load import load_model
    from tunewise.training.finetune import FinetuneConfig, finetune

    loaded = load_model(str(small_folder), device="cpu", dtype="bf16", options=LoadOptions(quantization="8bit"))
    assert "Linear8bitLt" in {type(m).__name__ for m in loaded.model.modules()}
    assert loaded.fingerprint.endswith(":bfloat16:8bit")
    backend = HFBackend(loaded, max_new_tokens=4)
    scored = backend.score_batch(backend.encode([[{"role": "user", "content": "What is 1 plus 2?"}]], ["3"]), {"loss"})
    assert math.isfinite(scored["loss"][0]) and scored["loss"][0] > 0
    examples = [parse_record({"prompt": f"What is {i} plus 2?", "response": str(i + 2)}) for i in range(6)]
    result = finetune(loaded, examples, FinetuneConfig(max_steps=2, batch_size=2), output_dir=tmp_path / "adapter")
    assert all(math.isfinite(step["loss"]) for step in result.log.to_dict()["steps"])
    result.release()
    assert not any("lora_" in name for name, _ in loaded.model.named_parameters())
    assert "Linear8bitLt" in {type(m).__name__ for m in loaded.model.modules()}


@pytest.mark.integration
def test_device_map_auto_places_every_weight_and_gives_the_same_scores(small_folder):
    """``--device-map auto`` (accelerate's placement) on a machine with one device puts every weight
    there and scores exactly as the plain load does."""
    import torch

    from tunewise.model.hf import HFBackend
    from tunewise.model.load import load_model

    def loss_of(options):
        loaded = load_model(str(small_folder), device="cpu", dtype="fp32", options=options)
        assert {p.device for p in loaded.model.parameters()} == {torch.device("cpu")}
        backend = HFBackend(loaded, max_new_tokens=4)
        encoded = backend.encode([[{"role": "user", "content": "What is 1 plus 2?"}]], ["3"])
        return backend.score_batch(encoded, {"loss"})["loss"][0]

    assert loss_of(LoadOptions(device_map="auto")) == loss_of(LoadOptions())
