"""LoRA fine-tuning on tiny-random: completion-only loss, seeding, the adapter on disk."""

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
    length_grouped_batches,
    load_adapter,
)
from tunewise.model.load import load_model
from tunewise.data.pool import parse_record


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


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


def test_length_grouped_batches_cover_every_example_once_and_are_seeded():
    import torch

    lengths = [5, 50, 7, 48, 9, 30, 31, 6, 49, 8, 10]
    first = length_grouped_batches(lengths, 3, torch.Generator().manual_seed(1))
    again = length_grouped_batches(lengths, 3, torch.Generator().manual_seed(1))
    other = length_grouped_batches(lengths, 3, torch.Generator().manual_seed(2))
    assert sorted(i for batch in first for i in batch) == list(range(len(lengths)))
    assert first == again and first != other
    # Within the window the batches are sorted by length, so padding stays small.
    assert all(lengths[batch[0]] >= lengths[batch[-1]] for batch in first)


def test_first_step_loss_is_the_completion_only_loss_of_the_base_model(tiny, sums):
    import torch

    config = FinetuneConfig(batch_size=len(sums), gradient_accumulation_steps=1, max_steps=1, lora_dropout=0.0)
    result = finetune(tiny, sums, config)
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
    first = finetune(tiny, sums, config)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = finetune(tiny, sums, config)
    other_seed = finetune(tiny, sums, dataclasses.replace(config, seed=4))

    losses = [step["loss"] for step in first.log.steps]
    assert len(losses) == 6 * 3
    assert sum(losses[-3:]) < sum(losses[:3])
    assert losses == [step["loss"] for step in again.log.steps]
    assert losses != [step["loss"] for step in other_seed.log.steps]
    assert first.log.examples_seen == 6 * len(sums)
    assert all(torch.equal(p, before[name]) for name, p in tiny.model.named_parameters())
    probe = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert not torch.allclose(first.model(probe).logits, tiny.model(probe).logits)
    assert not any("lora" in name for name, _ in first.model.named_parameters())


def test_max_steps_and_gradient_accumulation_count_optimizer_steps(tiny, sums):
    progress = []
    result = finetune(tiny, sums, FinetuneConfig(batch_size=2, gradient_accumulation_steps=3, max_steps=5),
                      progress=lambda step, total, loss: progress.append((step, total)))
    assert [step["step"] for step in result.log.steps] == [1, 2, 3, 4, 5]
    assert progress == [(step, 5) for step in range(1, 6)]
    # 12 examples = 6 micro-batches = 2 optimizer steps per epoch: max_steps runs into a third epoch.
    assert [step["epoch"] for step in result.log.steps] == [0, 0, 1, 1, 2]
    assert result.log.examples_seen == 5 * 6


def test_saved_adapter_reloads_to_the_same_model(tiny, sums, tmp_path):
    import torch

    adapter_dir = tmp_path / "adapter"
    result = finetune(tiny, sums, FinetuneConfig(learning_rate=1e-2, max_steps=3), output_dir=adapter_dir)
    assert result.adapter_dir == adapter_dir
    info = json.loads((adapter_dir / ADAPTER_INFO_FILE).read_text())
    assert info["model_fingerprint"] == tiny.fingerprint
    assert info["finetune_config"]["max_steps"] == 3 and len(info["training"]["steps"]) == 3
    reloaded = load_adapter(tiny, adapter_dir)
    probe = torch.tensor([[7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(reloaded(probe).logits, result.model(probe).logits, atol=1e-6)

    # Writing again replaces the earlier adapter whole.
    finetune(tiny, sums, FinetuneConfig(max_steps=1), output_dir=adapter_dir)
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
