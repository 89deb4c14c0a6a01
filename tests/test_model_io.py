"""Saving and loading only the trained part, with the LLM and encoder identities it belongs to."""

import json

import pytest
import torch
from safetensors import safe_open

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.fixtures.llama import write_random_llama
from mullama.model.checkpoint import trained_parameters
from mullama.model.identity import IdentityWarning
from mullama.model.music_llama import MusicLlama

ENCODER = EncoderIdentity("tiny-mert", "c" * 64, "w" * 64, 24000, hidden_states=4, hidden_size=32)


def trained(folder, stage2):
    """A model whose whole trained set (and nothing else) has moved away from its initialisation."""
    model = MusicLlama.create(folder, ENCODER, device="cpu", query_len=2)
    if stage2:
        model.enable_stage2(lora_rank=4)
    with torch.no_grad():
        for parameter in trained_parameters(model.model).values():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.mark.parametrize("stage2", [False, True], ids=["stage1", "stage2"])
def test_round_trip_restores_every_trained_tensor_and_the_logits(tmp_path, tiny_llama, stage2):
    model = trained(tiny_llama, stage2)
    folder = model.save(tmp_path / "adapter", source={"trained": "test"})
    assert sorted(p.name for p in folder.iterdir()) == ["adapter.json", "adapter.safetensors"]
    manifest = json.loads((folder / "adapter.json").read_text())
    assert manifest["format"] == "mullama-adapter" and manifest["format_version"] == 1
    assert manifest["adapter"]["query_len"] == 2 and manifest["adapter"]["lora_rank"] == (4 if stage2 else 0)
    assert manifest["encoder"] == ENCODER.to_dict() and manifest["prompt_format"] == "clean"
    assert manifest["llm"]["name"] == "mullama-random-llama-tiny" and manifest["source"] == {"trained": "test"}
    with safe_open(str(folder / "adapter.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert all(n.startswith(("adapter.", "llm.")) for n in names)
    assert not any(n.endswith(("proj.weight", "embed_tokens.weight", "lm_head.weight")) for n in names)
    assert any(".lora_B" in n for n in names) == stage2

    loaded = MusicLlama.load(folder, tiny_llama, dtype="fp32", device="cpu", encoder=ENCODER)
    ours = dict(model.model.named_parameters())
    for name, parameter in loaded.model.named_parameters():
        assert torch.equal(parameter, ours[name]), name
    tokens, stacks = torch.tensor([[1, 40, 41, 42]]), torch.randn(1, 4, 32)
    assert torch.equal(loaded.logits(tokens, stacks), model.logits(tokens, stacks))
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_another_llm_is_refused_and_other_weights_warn(tmp_path, tiny_llama, tiny_gqa_llama):
    folder = trained(tiny_llama, False).save(tmp_path / "adapter")
    with pytest.raises(MullamaError, match="another configuration"):
        MusicLlama.load(folder, tiny_gqa_llama, device="cpu")
    reseeded = write_random_llama(tmp_path / "reseeded", "tiny", seed=7)  # same shapes and tokenizer
    with pytest.warns(IdentityWarning, match="LLM weights"):
        MusicLlama.load(folder, reseeded, device="cpu")
    with pytest.raises(MullamaError, match="LLM weights"):
        MusicLlama.load(folder, reseeded, device="cpu", strict=True)


def test_encoder_identity_is_checked(tmp_path, tiny_llama):
    folder = trained(tiny_llama, False).save(tmp_path / "adapter")
    with pytest.raises(MullamaError, match="4 x 32 layer stacks"):
        MusicLlama.load(folder, tiny_llama, device="cpu",
                        encoder=EncoderIdentity("mert-330m", "a", "b", 24000, hidden_states=25, hidden_size=1024))
    other = EncoderIdentity("other-mert", "d" * 64, "e" * 64, 24000, hidden_states=4, hidden_size=32)
    with pytest.warns(IdentityWarning, match="encoder"):
        MusicLlama.load(folder, tiny_llama, device="cpu", encoder=other)
    with pytest.raises(MullamaError, match="encoder"):
        MusicLlama.load(folder, tiny_llama, device="cpu", encoder=other, strict=True)


def test_damaged_adapter_folders_give_clear_errors(tmp_path, tiny_llama):
    with pytest.raises(MullamaError, match="adapter.json is missing"):
        MusicLlama.load(tmp_path, tiny_llama, device="cpu")
    folder = trained(tiny_llama, True).save(tmp_path / "adapter")
    manifest = json.loads((folder / "adapter.json").read_text())
    manifest["adapter"]["lora_rank"] = 0
    (folder / "adapter.json").write_text(json.dumps(manifest))
    with pytest.raises(MullamaError, match="unexpected"):
        MusicLlama.load(folder, tiny_llama, device="cpu")
    manifest["format_version"] = 99
    (folder / "adapter.json").write_text(json.dumps(manifest))
    with pytest.raises(MullamaError, match="version 99"):
        MusicLlama.load(folder, tiny_llama, device="cpu")
