"""Stage-2 additions and the exact trainable sets of both stages (docs/adapter.md)."""

import pytest
import torch

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.model.attention import MusicContext, adapter_term
from mullama.model.checkpoint import canonical_name
from mullama.model.music_llama import MusicLlama
from mullama.model.prompts import pad_right, tokenize_example
from mullama.model.stage2 import set_trainable

ENCODER = EncoderIdentity("tiny-mert", "c" * 64, "w" * 64, 24000, hidden_states=4, hidden_size=32)
STAGE1 = {"adapter.aggregator.weight", "adapter.aggregator.bias", "adapter.projection.weight",
          "adapter.projection.bias", "adapter.prefix.weight", "adapter.gates"} | {
    f"adapter.bridge.{b}.{part}.weight" for b in range(3) for part in ("norm", "w1", "w2", "w3")}


def stage2_names(layers):
    names = {"llm.norm.weight"}
    for i in range(layers):
        layer = f"llm.layers.{i}."
        names |= {layer + "input_layernorm.weight", layer + "post_attention_layernorm.weight"}
        names |= {layer + t + ".bias" for t in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj",
                                                "mlp.up_proj", "mlp.down_proj")}
        names |= {layer + t + m for t in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
                  for m in (".lora_A", ".lora_B")}
    return names


def trainable(model):
    return {canonical_name(n) for n, p in model.model.named_parameters() if p.requires_grad}


def test_trainable_sets_are_exactly_the_published_ones(tiny_gqa_llama):
    model = MusicLlama.create(tiny_gqa_llama, ENCODER, device="cpu")
    with pytest.raises(MullamaError, match="stage 2 needs"):
        set_trainable(model.model, 2)
    assert {canonical_name(n) for n in set_trainable(model.model, 1)} == STAGE1 == trainable(model)
    model.enable_stage2(biases=True, lora_rank=16)
    assert {canonical_name(n) for n in set_trainable(model.model, 1)} == STAGE1 == trainable(model)
    chosen = set_trainable(model.model, 2)
    assert {canonical_name(n) for n in chosen} == stage2_names(4) == trainable(model)
    assert len(chosen) == 4 * 21 + 1
    frozen = {n for n, p in model.model.named_parameters() if not p.requires_grad}
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in frozen and "music_adapter.gates" in frozen
    assert "model.embed_tokens.weight" in frozen and "lm_head.weight" in frozen


def test_stage2_additions_start_as_a_no_op_with_the_published_initialisation(tiny_gqa_llama):
    model = MusicLlama.create(tiny_gqa_llama, ENCODER, device="cpu")
    with torch.no_grad():
        model.model.music_adapter.gates.normal_()
    tokens, stacks = torch.tensor([[1, 40, 41, 42, 43]]), torch.randn(1, 4, 32)
    before = model.logits(tokens, stacks)
    model.enable_stage2(biases=True, lora_rank=16)
    torch.testing.assert_close(model.logits(tokens, stacks), before, atol=1e-6, rtol=0)
    layer = model.model.model.layers[0]
    attention, mlp = layer.self_attn, layer.mlp
    for module in (attention.q_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        assert torch.equal(module.base_layer.bias, torch.zeros_like(module.base_layer.bias))
    assert attention.k_proj.base_layer.bias is None and attention.v_proj.base_layer.bias is None
    for module in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj,
                   mlp.up_proj, mlp.down_proj):
        assert module.r["default"] == 16 and module.scaling["default"] == 1.0
        assert torch.equal(module.lora_B["default"].weight, torch.zeros_like(module.lora_B["default"].weight))
        down = module.lora_A["default"].weight  # nn.Linear's default: kaiming uniform, bound 1/sqrt(fan_in)
        assert down.abs().max() <= down.shape[1] ** -0.5 and down.std() > 0.25 * down.shape[1] ** -0.5
    assert attention.k_proj.lora_B["default"].weight.shape == (2 * 16, 16)  # GQA: k has 2 heads of 16
    with pytest.raises(MullamaError, match="already"):
        model.enable_stage2()


def test_the_prompt_path_uses_the_frozen_projections(tiny_llama):
    """As published, LoRA adapts the token path only: V(prompt) and K(prompt) use the base weights."""
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu", query_len=2)
    model.enable_stage2(biases=False, lora_rank=4)
    with torch.no_grad():
        model.model.music_adapter.gates.fill_(1.0)
        for layer in model.model.model.layers:
            layer.self_attn.v_proj.lora_B["default"].weight.normal_()
            layer.self_attn.k_proj.lora_B["default"].weight.normal_()
    attention = model.model.model.layers[-1].self_attn
    prompts = model.prompts(torch.randn(1, 4, 32))
    context = MusicContext(prompts, model.model.music_adapter.gates, model.config.first_adapted_layer)
    query = torch.randn(1, 4, 3, 16)  # (batch, heads, positions, head_dim)
    prompt = prompts[:, -1]  # the last layer's two prompt vectors
    values = (prompt @ attention.v_proj.base_layer.weight.T).view(1, 2, 4, 16).transpose(1, 2)
    keys = (prompt @ attention.k_proj.base_layer.weight.T).view(1, 2, 4, 16).transpose(1, 2)
    weights = (query @ keys.transpose(2, 3) / 4.0).softmax(-1)
    expected = (torch.tanh(torch.tensor(1.0)) * weights @ values).transpose(1, 2)
    torch.testing.assert_close(adapter_term(attention, query, context), expected)


def _loss_and_grads(model, stacks):
    examples = [tokenize_example(model.tokenizer, "Describe the audio", "A calm chorale."),
                tokenize_example(model.tokenizer, "Tempo?", "Slow.")]
    batch = {k: torch.tensor(v) for k, v in pad_right(examples).items()}
    model.model.zero_grad(set_to_none=True)
    loss = model.model(**batch, music_prompt=model.model.music_prompt(stacks)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_reaches_exactly_the_trainable_set(tiny_llama, stage):
    """Gradients flow from answer tokens through the injected prompt; activation checkpointing agrees."""
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu")
    with torch.no_grad():
        model.model.music_adapter.gates.normal_()  # at zero gates only the gates themselves get gradient
    if stage == 2:
        model.enable_stage2(lora_rank=4)
    chosen = set_trainable(model.model, stage)
    model.model.train()
    stacks = torch.randn(2, 4, 32)
    loss, grads = _loss_and_grads(model, stacks)
    assert torch.isfinite(loss) and set(grads) == set(chosen)
    assert all(g.abs().sum() > 0 for n, g in grads.items() if ".lora_A." not in n)  # lora_B = 0 blocks A at first
    model.model.activation_checkpointing_enable()  # non-reentrant: the prompt travels as a keyword argument
    checkpointed_loss, checkpointed = _loss_and_grads(model, stacks)
    torch.testing.assert_close(checkpointed_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-4)
