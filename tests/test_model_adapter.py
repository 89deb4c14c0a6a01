"""The adapter's shapes and maths (docs/adapter.md), and the injection into a frozen LLaMA."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.model.adapter import MusicAdapter
from mullama.model.music_llama import MusicLlama
from mullama.model.settings import AdapterConfig, default_adapted_layers

ENCODER = EncoderIdentity("tiny-mert", "c" * 64, "w" * 64, 24000, hidden_states=4, hidden_size=32)


def test_every_size_comes_from_the_encoder_and_llm_configs():
    config = AdapterConfig(hidden_states=25, encoder_hidden_size=1024, d_model=4096, num_heads=32, num_layers=32,
                           adapted_layers=default_adapted_layers(32))
    with torch.device("meta"):
        adapter = MusicAdapter(config)
    assert adapter.aggregator.weight.shape == (1, 25, 1) and adapter.aggregator.bias.shape == (1,)
    assert adapter.projection.weight.shape == (4096, 1024) and adapter.projection.bias.shape == (4096,)
    assert len(adapter.bridge) == 3
    assert adapter.bridge[0].w1.weight.shape == (16384, 4096) and adapter.bridge[0].w2.weight.shape == (4096, 16384)
    assert adapter.bridge[0].w1.bias is None and adapter.bridge[0].norm.eps == 1e-6
    assert adapter.prefix.weight.shape == (20, 4096) and adapter.gates.shape == (20, 32)
    assert config.first_adapted_layer == 12
    assert default_adapted_layers(4) == 2 and default_adapted_layers(80) == 50


def test_prompts_are_music_token_plus_prefix_rows():
    config = AdapterConfig(hidden_states=4, encoder_hidden_size=32, d_model=16, num_heads=2, num_layers=4,
                           adapted_layers=2, query_len=3)
    torch.manual_seed(0)
    adapter = MusicAdapter(config)
    stacks = torch.randn(2, 4, 32)
    feature = adapter.feature(stacks)
    aggregated = (stacks * adapter.aggregator.weight[0, :, 0, None]).sum(1) + adapter.aggregator.bias
    torch.testing.assert_close(feature, F.normalize(aggregated, dim=-1))
    torch.testing.assert_close(feature.norm(dim=-1), torch.ones(2))
    prompts = adapter.prompts(stacks)
    assert prompts.shape == (2, 2, 3, 16)
    token = adapter.music_token(feature)
    torch.testing.assert_close(prompts[1, 1, 2], token[1] + adapter.prefix.weight[1 * 3 + 2])
    assert torch.equal(adapter.gates, torch.zeros(2, 2))
    with pytest.raises(MullamaError, match="another encoder"):
        adapter.feature(torch.randn(2, 5, 32))


@pytest.fixture(params=["mha", "gqa"])
def llama_folder(request, tiny_llama, tiny_gqa_llama):
    return tiny_llama if request.param == "mha" else tiny_gqa_llama


def test_zero_gates_give_exactly_the_bare_llama(llama_folder):
    model = MusicLlama.create(llama_folder, ENCODER, device="cpu")
    bare = LlamaForCausalLM.from_pretrained(llama_folder, dtype=torch.float32).eval()
    tokens = torch.tensor([[1, 40, 41, 42, 43], [1, 50, 51, 52, 53]])
    stacks = torch.randn(2, 4, 32)
    with torch.no_grad():
        expected = bare(input_ids=tokens).logits
    assert torch.equal(model.logits(tokens, stacks), expected)
    with torch.no_grad():
        model.model.music_adapter.gates.normal_()
    assert (model.logits(tokens, stacks) - expected).abs().max() > 1e-3


def test_layers_before_the_first_adapted_layer_never_see_the_audio(llama_folder):
    model = MusicLlama.create(llama_folder, ENCODER, device="cpu")
    with torch.no_grad():
        model.model.music_adapter.gates.normal_()
    tokens = torch.tensor([[1, 40, 41, 42]])
    seen = {}
    hooks = [layer.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, []).append(out.clone()))
             for i, layer in enumerate(model.model.model.layers)]
    model.logits(tokens, torch.randn(1, 4, 32))
    model.logits(tokens, torch.randn(1, 4, 32))
    for hook in hooks:
        hook.remove()
    first = model.config.first_adapted_layer
    assert first == 2
    for i, (a, b) in sorted(seen.items()):
        assert torch.equal(a, b) == (i < first), f"layer {i}"


def test_the_music_prompt_is_the_only_extra_argument_and_needs_an_adapter(tiny_llama):
    model = MusicLlama.create(tiny_llama, ENCODER, device="cpu")
    tokens = torch.tensor([[1, 40, 41]])
    prompts = model.prompts(torch.randn(2, 4, 32))
    with pytest.raises(MullamaError, match="batch"):
        model.model(input_ids=tokens, music_prompt=prompts)
    with pytest.raises(MullamaError, match="stacks"):
        model.logits(tokens, torch.randn(1, 25, 1024))


def test_eager_and_sdpa_agree_and_the_causal_mask_survives(tiny_gqa_llama):
    """The wrapper keeps each backend's mask function: no position may see a later token."""
    models = [MusicLlama.create(tiny_gqa_llama, ENCODER, device="cpu", query_len=2, attention=base, seed=1)
              for base in ("sdpa", "eager")]
    assert [m.model.config._attn_implementation for m in models] == ["mullama_sdpa", "mullama_eager"]
    for model in models:
        with torch.no_grad():
            model.model.music_adapter.gates.copy_(torch.linspace(-1, 1, 8).view(2, 4))
    tokens, stacks = torch.tensor([[1, 40, 41, 42, 43, 44]]), torch.randn(1, 4, 32)
    sdpa, eager = (m.logits(tokens, stacks) for m in models)
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)
    changed = tokens.clone()
    changed[0, -1] = 99
    for model in models:
        torch.testing.assert_close(model.logits(changed, stacks)[:, :-1], model.logits(tokens, stacks)[:, :-1],
                                   atol=1e-6, rtol=0)
