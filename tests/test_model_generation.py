"""generate() with the music prompt: KV cache, left-padded batches, sampling, expansion (docs/recipes.md)."""

import pytest
import torch
from transformers import GenerationConfig

from mullama.encoder_identity import EncoderIdentity
from mullama.model.music_llama import MusicLlama
from mullama.model.prompts import pad_left, prompt_ids

ENCODER = EncoderIdentity("tiny-mert", "c" * 64, "w" * 64, 24000, hidden_states=4, hidden_size=32)


def trained_like(folder, query_len=1, stage2=False):
    """A model whose adapter (and stage-2 parts) are far from their zero initialisation."""
    model = MusicLlama.create(folder, ENCODER, device="cpu", query_len=query_len, seed=3)
    if stage2:
        model.enable_stage2(lora_rank=4)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, parameter in model.model.named_parameters():
            if name.startswith("music_adapter.gates") or ".lora_B." in name or name.endswith(".bias"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return model


@pytest.mark.parametrize("query_len,stage2,gqa", [(1, False, False), (2, True, False), (1, True, True)])
def test_kv_cached_generation_equals_a_full_forward(tiny_llama, tiny_gqa_llama, query_len, stage2, gqa):
    model = trained_like(tiny_gqa_llama if gqa else tiny_llama, query_len, stage2)
    stacks = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(5))
    batch = {"input_ids": torch.tensor([[2, 2, 1, 30, 31, 32], [1, 40, 41, 42, 43, 44]]),
             "attention_mask": torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])}
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=2)
    with torch.no_grad():
        out = model.model.generate(**batch, music_prompt=model.prompts(stacks), generation_config=config,
                                   output_logits=True, return_dict_in_generate=True)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 6, dtype=torch.long)], 1)
    full = model.logits(out.sequences, stacks, attention_mask=mask)
    start = batch["input_ids"].shape[1]
    assert out.sequences.shape == (2, start + 6)
    for step, logits in enumerate(out.logits):
        torch.testing.assert_close(logits, full[:, start + step - 1], atol=2e-5, rtol=0)
        assert torch.equal(out.sequences[:, start + step], full[:, start + step - 1].argmax(-1))


def test_a_batch_of_different_lengths_answers_like_one_at_a_time(tiny_llama):
    model = trained_like(tiny_llama, query_len=2, stage2=True)
    stacks = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(6))
    questions = ["Describe the audio in detail", "What is the mood of this chorale in a minor key?", "Tempo?"]
    ids = [prompt_ids(model.tokenizer, q, model.prompt_format) for q in questions]
    assert len({len(i) for i in ids}) == 3
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=2)

    def generate(rows, stack):
        batch = {k: torch.tensor(v) for k, v in pad_left(rows, 2).items()}
        with torch.no_grad():
            return model.model.generate(**batch, music_prompt=model.prompts(stack), generation_config=config,
                                        output_logits=True, return_dict_in_generate=True)

    together = generate(ids, stacks)
    for row in range(3):
        alone = generate([ids[row]], stacks[row:row + 1])
        for step in range(5):
            torch.testing.assert_close(together.logits[step][row], alone.logits[step][0], atol=2e-5, rtol=0)
        assert torch.equal(together.sequences[row, -5:], alone.sequences[0, -5:])
    answers = model.answer_batch(stacks, questions, temperature=0, max_new_tokens=12)
    assert answers == [model.answer(stacks[i], q, temperature=0, max_new_tokens=12) for i, q in enumerate(questions)]


def test_sampling_is_seeded_and_expands_the_music_prompt(tiny_llama):
    model = trained_like(tiny_llama)
    stack = torch.randn(4, 32)
    first = model.answer(stack, "Describe the audio", temperature=0.6, top_p=0.8, max_new_tokens=10, seed=1)
    again = model.answer(stack, "Describe the audio", temperature=0.6, top_p=0.8, max_new_tokens=10, seed=1)
    assert first == again
    samples = {model.answer(stack, "Describe the audio", temperature=1.0, top_p=1.0, max_new_tokens=10, seed=s)
               for s in range(4)}
    assert len(samples) > 1
    # num_return_sequences repeats every model input along the batch; the prompt must follow its text.
    prompt_ids = torch.tensor([[1, 40, 41, 42]])
    config = GenerationConfig(max_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=3, eos_token_id=None,
                              pad_token_id=2)
    with torch.no_grad():
        out = model.model.generate(input_ids=prompt_ids, music_prompt=model.prompts(stack[None]),
                                   generation_config=config)
    assert out.shape == (3, 9) and (out == out[0]).all()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cpu_inference_in_half_precision(tiny_llama, dtype):
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu", dtype=dtype, adapter_dtype=dtype, query_len=2)
    with torch.no_grad():
        model.model.music_adapter.gates.normal_()
    assert model.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype] and model.device.type == "cpu"
    assert model.model.music_adapter.prefix.weight.dtype == model.dtype
    logits = model.logits(torch.tensor([[1, 40, 41]]), torch.randn(1, 4, 32))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert isinstance(model.answer(torch.randn(4, 32), "Describe the audio", max_new_tokens=4, seed=0), str)
