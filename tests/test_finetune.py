"""Fine-tuning on TRL with tiny-random: completion-only loss, seeding, the adapter in place and on disk,
the paper-A profile, precision, and the refusals."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tunewise.errors import TunewiseError
from tunewise.model.chat import IGNORE_INDEX, encode_example, encode_prompt, pad_examples
from tunewise.training.finetune import (
    ADAPTER_INFO_FILE,
    FinetuneConfig,
    check_adapter_output,
    finetune,
    load_adapter,
    read_sft_overrides,
    split_validation,
)
from tunewise.model.load import load_model
from tunewise.data.pool import parse_record


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", dtype="fp32")


@pytest.fixture(scope="module")
def sums():
    return [parse_record({"question": f"What is {a} + {b}?", "answer": f"{a + b}"}) for a in range(4) for b in range(3)]


@pytest.mark.parametrize(
    ("field", "value"),
    [("lora_rank", 0), ("learning_rate", -1e-4), ("lora_dropout", 1.0), ("batch_size", 0), ("max_steps", 0),
     ("warmup_ratio", 1.5), ("target_modules", " , ")],
)
def test_config_refuses_invalid_values(field, value):
    with pytest.raises(TunewiseError) as raised:
        FinetuneConfig(**{field: value})
    assert raised.value.field == field


def test_encode_example_masks_the_prompt_and_ends_with_eos(tiny):
    tokenizer = tiny.tokenizer
    prompt = ({"role": "user", "content": "What is 2 + 3?"},)
    encoded = encode_example(tokenizer, prompt, "5", max_length=512)
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = tokenizer("5", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(prompt_ids).endswith("<|im_start|>assistant\n")
    assert encoded.input_ids == prompt_ids + response_ids
    assert encoded.labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids
    assert encoded.completion_tokens == len(response_ids) and not encoded.truncated

    cut = encode_example(tokenizer, prompt, "5", max_length=len(prompt_ids) + 1)
    assert cut.truncated and cut.labels[-1] == response_ids[0] and len(cut.input_ids) == len(prompt_ids) + 1


def test_first_step_loss_is_the_completion_only_loss_of_the_base_model(tiny, sums):
    import torch

    config = FinetuneConfig(batch_size=len(sums), gradient_accumulation_steps=1, max_steps=1, lora_dropout=0.0)
    # In fp32: bf16 mixed precision (auto on a CPU with bf16 instructions) moves the loss by ~1e-5.
    result = finetune(tiny, sums, config, dtype="float32")
    result.release()
    encoded = [encode_example(tiny.tokenizer, e.prompt, e.response, 512) for e in sums]
    input_ids, attention_mask, labels = pad_examples(encoded, tiny.tokenizer.pad_token_id, tiny.device)
    with torch.no_grad():
        expected = tiny.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()
    assert result.log.steps[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.log.steps[0]["completion_tokens"] == sum(e.completion_tokens for e in encoded)


def test_finetune_learns_is_seeded_and_leaves_the_base_model_alone(tiny, sums):
    import torch

    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    state = torch.random.get_rng_state()
    config = FinetuneConfig(learning_rate=3e-2, epochs=6, batch_size=4, gradient_accumulation_steps=1, seed=3)
    probe = torch.tensor([[1, 2, 3, 4, 5]])
    with finetune(tiny, sums, config) as first:
        assert torch.equal(torch.random.get_rng_state(), state)
        with torch.no_grad():
            adapted_logits = first.model(probe).logits
    with finetune(tiny, sums, config) as again:
        pass
    with finetune(tiny, sums, dataclasses.replace(config, seed=4)) as other_seed:
        pass

    losses = [step["loss"] for step in first.log.steps]
    assert len(losses) == 6 * 3
    assert sum(losses[-3:]) < sum(losses[:3])
    assert losses == [step["loss"] for step in again.log.steps]
    assert losses != [step["loss"] for step in other_seed.log.steps]
    assert first.log.examples_seen == 6 * len(sums)
    assert all(torch.equal(p, before[name]) for name, p in tiny.model.named_parameters())
    with torch.no_grad():
        assert not torch.allclose(adapted_logits, tiny.model(probe).logits)
    assert not any("lora" in name for name, _ in tiny.model.named_parameters())


def test_max_steps_and_gradient_accumulation_count_optimizer_steps(tiny, sums):
    progress = []
    result = finetune(tiny, sums, FinetuneConfig(batch_size=2, gradient_accumulation_steps=3, max_steps=5),
                      progress=lambda step, total, loss: progress.append((step, total)))
    result.release()
    assert [step["step"] for step in result.log.steps] == [1, 2, 3, 4, 5]
    assert progress == [(step, 5) for step in range(1, 6)]
    # 12 examples = 6 micro-batches = 2 optimizer steps per epoch: max_steps runs into a third epoch.
    assert [step["epoch"] for step in result.log.steps] == [0, 0, 1, 1, 2]
    assert result.log.examples_seen == 5 * 6


def test_saved_adapter_reloads_to_the_same_model(tiny, sums, tmp_path):
    import torch

    adapter_dir = tmp_path / "adapter"
    probe = torch.tensor([[7, 8, 9, 10]])
    with finetune(tiny, sums, FinetuneConfig(learning_rate=1e-2, max_steps=3), output_dir=adapter_dir) as result:
        assert result.adapter_dir == adapter_dir
        with torch.no_grad():
            trained_logits = result.model(probe).logits
    info = json.loads((adapter_dir / ADAPTER_INFO_FILE).read_text())
    assert info["model_fingerprint"] == tiny.fingerprint
    assert info["finetune_config"]["max_steps"] == 3 and len(info["training"]["steps"]) == 3
    reloaded = load_adapter(tiny, adapter_dir)
    with torch.no_grad():
        assert torch.allclose(reloaded(probe).logits, trained_logits, atol=1e-6)
    reloaded.unload()

    # Writing again replaces the earlier adapter whole.
    finetune(tiny, sums, FinetuneConfig(max_steps=1), output_dir=adapter_dir).release()
    assert len(json.loads((adapter_dir / ADAPTER_INFO_FILE).read_text())["training"]["steps"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

    info["model_fingerprint"] = "some-other-model:float32"
    (adapter_dir / ADAPTER_INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(TunewiseError, match="trained on model"):
        load_adapter(tiny, adapter_dir)


def test_refuses_unlabelled_examples_and_foreign_output_folders(tiny, sums, tmp_path):
    unlabelled = parse_record({"question": "What is 1 + 1?"})
    with pytest.raises(TunewiseError, match="no response"):
        finetune(tiny, [*sums, unlabelled], FinetuneConfig(max_steps=1))
    with pytest.raises(TunewiseError, match="no examples"):
        finetune(tiny, [], FinetuneConfig(max_steps=1))
    occupied = tmp_path / "notes"
    occupied.mkdir()
    (occupied / "todo.txt").write_text("keep me")
    with pytest.raises(TunewiseError, match="not an adapter folder"):
        check_adapter_output(occupied)
    with pytest.raises(TunewiseError, match="not an adapter folder"):
        finetune(tiny, sums, FinetuneConfig(max_steps=1), output_dir=occupied)
    assert (occupied / "todo.txt").read_text() == "keep me"
    with pytest.raises(TunewiseError, match="cannot attach LoRA"):
        finetune(tiny, sums, FinetuneConfig(max_steps=1, target_modules="no_such_proj"))


def test_no_copy_of_the_base_model_the_adapter_goes_on_in_place(tiny, sums):
    import torch

    pointers = {name: p.data_ptr() for name, p in tiny.model.named_parameters()}
    with finetune(tiny, sums, FinetuneConfig(max_steps=2)) as result:
        assert result.model.get_base_model() is tiny.model
        base_pointers = {name.replace("base_model.model.", "").replace(".base_layer", ""): p.data_ptr()
                         for name, p in result.model.named_parameters() if "lora_" not in name}
        # every base weight the adapted model computes with is the loaded model's own storage
        assert base_pointers == pointers
        with pytest.raises(TunewiseError, match="not released"):
            finetune(tiny, sums, FinetuneConfig(max_steps=1))
    assert {name: p.data_ptr() for name, p in tiny.model.named_parameters()} == pointers
    assert "forward" not in vars(tiny.model) and not tiny.model.training
    assert all(not p.requires_grad or "lora" not in name for name, p in tiny.model.named_parameters())
    with torch.no_grad():
        tiny.model(torch.tensor([[1, 2, 3]]))


def test_refuses_examples_without_a_response_token_after_truncation(tiny, sums):
    prompt_length = max(len(encode_prompt(tiny.tokenizer, example.prompt)) for example in sums)
    with pytest.raises(TunewiseError, match="do not fit --max-seq-length"):  # cut only when asked
        finetune(tiny, sums, FinetuneConfig(max_steps=1, max_seq_length=prompt_length))
    with pytest.raises(TunewiseError, match="no example keeps a response token") as raised:
        finetune(tiny, sums, FinetuneConfig(max_steps=1, max_seq_length=prompt_length, truncate=True))
    assert "--max-seq-length" in raised.value.fix
    assert not any("lora" in name for name, _ in tiny.model.named_parameters())
    finetune(tiny, sums, FinetuneConfig(max_steps=1, max_seq_length=prompt_length + 1, truncate=True)).release()


def test_non_finite_loss_stops_training_and_saves_nothing(tiny, sums, tmp_path):
    with pytest.raises(TunewiseError, match="became (nan|inf)"):
        finetune(tiny, sums, FinetuneConfig(learning_rate=1e30, max_steps=6, batch_size=4, warmup_ratio=0.0),
                 output_dir=tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists() and list(tmp_path.iterdir()) == []
    assert not any("lora" in name for name, _ in tiny.model.named_parameters())


def test_padding_free_batches_give_the_padded_loss(tiny, sums):
    losses = {}
    for batching in ("random", "group_by_length", "padding_free"):
        config = FinetuneConfig(batch_size=len(sums), gradient_accumulation_steps=1, max_steps=1, lora_dropout=0.0,
                                batching=batching)
        with finetune(tiny, sums, config, dtype="float32") as result:
            losses[batching] = result.log.steps[0]["loss"]
            positions = result.log.positions_seen
            assert result.log.tokens_seen == sum(len(encode_example(tiny.tokenizer, e.prompt, e.response, 512)
                                                     .input_ids) for e in sums)
            if batching == "padding_free":
                assert positions == result.log.tokens_seen
    assert losses["padding_free"] == pytest.approx(losses["random"], rel=1e-5)
    assert losses["group_by_length"] == pytest.approx(losses["random"], rel=1e-5)


def test_dtype_is_resolved_from_the_hardware():
    import torch

    from tunewise.model.precision import cpu_runs_bf16, resolve_dtype

    assert cpu_runs_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_runs_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_runs_bf16("flags : fpu avx2 avx512f avx512bw\n")
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == "float32" and resolve_dtype("fp32", cpu) == "float32"
    assert resolve_dtype("bf16", cpu) == "bfloat16"
    assert resolve_dtype("auto", cpu) == ("bfloat16" if cpu_runs_bf16() else "float32")
    assert resolve_dtype("auto", torch.device("meta")) == "float32"
    with pytest.raises(TunewiseError, match="unknown dtype") as raised:
        resolve_dtype("bfloat61", cpu)
    assert raised.value.field == "dtype" and "bfloat16" in raised.value.fix


def test_training_precision_follows_dtype(sums):
    from tunewise.model.precision import cpu_runs_bf16

    tiny = load_model("tiny-random", dtype="float32")  # fp32 weights, so bf16 autocast is the only difference

    with finetune(tiny, sums, FinetuneConfig(max_steps=1), dtype="float32") as fp32:
        assert fp32.log.precision == "float32"
    with finetune(tiny, sums, FinetuneConfig(max_steps=1), dtype="bfloat16") as bf16:
        assert bf16.log.precision == "bfloat16"
    with finetune(tiny, sums, FinetuneConfig(max_steps=1)) as auto:
        assert auto.log.precision == ("bfloat16" if cpu_runs_bf16() else "float32")
    assert bf16.log.steps[0]["loss"] != fp32.log.steps[0]["loss"]
    assert bf16.log.steps[0]["loss"] == pytest.approx(fp32.log.steps[0]["loss"], rel=2e-2)


def test_paper_a_profile_is_the_released_recipe():
    config = FinetuneConfig.from_profile("paper-a")
    assert (config.method, config.learning_rate, config.lr_scheduler, config.warmup_ratio) == ("full", 1e-5, "cosine", 0.1)
    assert (config.max_steps, config.eval_steps, config.early_stopping_patience) == (500, 4, 10)
    assert config.batch_size * config.gradient_accumulation_steps == 32
    assert FinetuneConfig.from_profile("paper-a", method="lora", max_steps=20).max_steps == 20
    with pytest.raises(TunewiseError, match="unknown fine-tuning profile"):
        FinetuneConfig.from_profile("paper-b")
    with pytest.raises(TunewiseError) as raised:
        FinetuneConfig(early_stopping_patience=3)
    assert raised.value.field == "early_stopping_patience"


def test_split_validation_is_seeded_and_holds_out_a_fifth():
    items = list(range(10))
    train, valid = split_validation(items, 0.2, seed=1)
    assert len(valid) == 2 and sorted(train + valid) == items
    assert split_validation(items, 0.2, seed=1) == (train, valid)
    assert len(split_validation(items[:3], 0.2, seed=0)[1]) == 1


def test_early_stopping_restores_the_best_checkpoint(tiny, sums):
    import torch

    # A learning rate this high overshoots after a few steps, so the validation loss turns up.
    config = FinetuneConfig(learning_rate=0.3, max_steps=40, batch_size=4, gradient_accumulation_steps=1,
                            eval_steps=1, early_stopping_patience=2, lora_dropout=0.0, warmup_ratio=0.0)
    train, valid = split_validation(sums, config.validation_fraction, config.seed)
    with finetune(tiny, sums, config, dtype="float32") as result:
        evaluations = result.log.evaluations
        best = min(evaluations, key=lambda e: e["eval_loss"])
        assert result.log.best_step == best["step"]
        assert len(result.log.steps) < config.max_steps  # stopped early
        assert evaluations[-1]["step"] - best["step"] == config.early_stopping_patience
        assert result.log.examples == len(train) and result.log.validation_examples == len(valid)
        encoded = [encode_example(tiny.tokenizer, e.prompt, e.response, 512) for e in valid]
        input_ids, attention_mask, labels = pad_examples(encoded, tiny.tokenizer.pad_token_id, tiny.device)
        with torch.no_grad():
            restored = result.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()
    assert restored == pytest.approx(best["eval_loss"], rel=1e-4)
    assert restored < evaluations[-1]["eval_loss"]


def test_full_fine_tuning_restores_the_base_weights(tiny, sums):
    import torch

    before = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    with finetune(tiny, sums, FinetuneConfig(method="full", learning_rate=1e-2, max_steps=2)) as result:
        assert any(not torch.equal(p, before[name]) for name, p in result.model.named_parameters())
    assert all(torch.equal(p, before[name]) for name, p in tiny.model.named_parameters())


def test_sft_config_fields_pass_through_from_yaml(tiny, sums, tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("lr_scheduler_type: constant\nwarmup_steps: 0\n")
    overrides = read_sft_overrides(path)
    with finetune(tiny, sums, FinetuneConfig(max_steps=3), sft_overrides=overrides) as result:
        assert {step["learning_rate"] for step in result.log.steps} == {FinetuneConfig().learning_rate}
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(TunewiseError, match="not an SFTConfig field") as raised:
        read_sft_overrides(path)
    assert raised.value.field == "learning_rat" and "learning_rate" in raised.value.fix
    path.write_text("output_dir: elsewhere\n")
    with pytest.raises(TunewiseError, match="managed by tunewise"):
        read_sft_overrides(path)


def test_completion_loss_is_the_full_logits_loss_with_the_head_on_completion_positions_only(tiny, sums):
    import torch

    from tunewise.model.training_loss import completion_loss

    encoded = [encode_example(tiny.tokenizer, e.prompt, e.response, 512) for e in sums[:5]]
    input_ids, attention_mask, labels = pad_examples(encoded, tiny.tokenizer.pad_token_id, tiny.device)
    rows = []
    hook = tiny.model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    try:
        with torch.no_grad():
            full = tiny.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()
            rows.clear()
            batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
            ours = completion_loss(tiny.model, batch).item()
            kept = rows[0][1]
            halved = completion_loss(tiny.model, batch, num_items_in_batch=2 * sum(e.completion_tokens
                                                                                   for e in encoded)).item()
            # One row, as padding-free batches and single examples come: the head sees its completion positions.
            rows.clear()
            one = encoded[0]
            alone = completion_loss(tiny.model, {"input_ids": torch.tensor([one.input_ids]),
                                                 "labels": torch.tensor([one.labels])}).item()
    finally:
        hook.remove()
    assert ours == pytest.approx(full, rel=1e-5)
    assert halved == pytest.approx(full / 2, rel=1e-5)
    # The positions some row learns from, never the whole padded length.
    assert kept < input_ids.shape[1] - 1
    assert rows[0][:2] == (1, one.completion_tokens)
    assert alone > 0


def test_fp32_fine_tune_losses_are_trls_own(tiny, sums, monkeypatch):
    """The completion-positions loss replaces TRL's fused head on the CPU: the same losses, step by step."""
    import tunewise.training.finetune as finetune_module

    config = FinetuneConfig(batch_size=3, gradient_accumulation_steps=2, epochs=2, learning_rate=1e-2)
    losses = {}
    for name, applies in (("trl", lambda trainer: False), ("tunewise", finetune_module._completion_loss_applies)):
        monkeypatch.setattr(finetune_module, "_completion_loss_applies", applies)
        with finetune(tiny, sums, config, dtype="float32") as result:
            losses[name] = [step["loss"] for step in result.log.steps]
    assert len(losses["trl"]) == 4
    assert losses["tunewise"] == pytest.approx(losses["trl"], abs=1e-5)


def test_trls_loss_is_kept_where_ours_would_differ(tiny, sums):
    from tunewise.training.finetune import _completion_loss_applies

    from types import SimpleNamespace

    class Trainer:
        compute_loss_func, label_smoother, aux_loss_enabled = None, None, False

        def __init__(self, processes=1, **args):
            self.args = FinetuneConfig().to_sft_config("unused", bf16=False, use_cpu=True, overrides=args)
            self.accelerator = SimpleNamespace(num_processes=processes)

    assert _completion_loss_applies(Trainer())
    assert not _completion_loss_applies(Trainer(loss_type="dft"))
    assert not _completion_loss_applies(Trainer(processes=2))
    smoothed = Trainer()
    smoothed.label_smoother = object()
    assert not _completion_loss_applies(smoothed)
