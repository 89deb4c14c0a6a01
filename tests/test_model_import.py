"""The importer against an independent Meta-layout reference (docs/adapter.md,
docs/released-checkpoint.md), and its refusals."""

import datetime
import json

import pytest
import torch
from mu_llama_reference import Shapes, random_state, reference_logits, save_released, write_hf_llama

from mullama.errors import MullamaError
from mullama.model.importer import import_mu_llama, meta_to_hf_rows
from mullama.model.music_llama import MusicLlama


def build(tmp_path, tiny_llama, shapes, stage2=True, prefix="mu_mert_"):
    state = random_state(shapes, stage2=stage2, prefix=prefix)
    checkpoint = save_released(tmp_path / "checkpoint.pth", state)
    llama = write_hf_llama(tmp_path / "llama", state, shapes, tiny_llama)
    return state, checkpoint, llama


def inputs(shapes, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, shapes.vocab, (2, 9), generator=g)
    stacks = torch.randn(2, shapes.hidden_states, shapes.encoder_hidden, generator=g)
    return tokens, stacks


CASES = {
    "stage2": (Shapes(), True),
    "stage2-gqa": (Shapes(kv_heads=2), True),
    "stage2-query_len2": (Shapes(query_len=2), True),
    "stage1": (Shapes(), False),
}


@pytest.mark.parametrize("case", CASES)
def test_imported_checkpoint_gives_the_reference_logits(tmp_path, tiny_llama, case):
    shapes, stage2 = CASES[case]
    state, checkpoint, llama = build(tmp_path, tiny_llama, shapes, stage2)
    report = import_mu_llama(checkpoint, llama, tmp_path / "adapter", query_len=shapes.query_len)
    assert report.llama_matches and not report.unknown and report.ignored == 2 and not report.legacy_names
    per_layer = 7 + (0 if stage2 else 2)
    assert report.frozen_checked == 2 + shapes.layers * per_layer + (0 if stage2 else 1)
    config = report.config
    assert (config.adapted_layers, config.query_len, config.hidden_states, config.encoder_hidden_size) == (
        shapes.adapted, shapes.query_len, shapes.hidden_states, shapes.encoder_hidden)
    assert (config.stage2_biases, config.lora_rank) == ((True, shapes.rank) if stage2 else (False, 0))

    model = MusicLlama.load(tmp_path / "adapter", llama, dtype="fp32", device="cpu")
    assert model.prompt_format == "mu-llama"
    tokens, stacks = inputs(shapes)
    expected = reference_logits(state, shapes, tokens, stacks)
    torch.testing.assert_close(model.logits(tokens, stacks), expected, atol=1e-5, rtol=0)
    # The adapter really contributes: without the music the logits move far beyond the tolerance.
    bare = model.model(input_ids=tokens).logits
    assert (bare - expected).abs().max() > 1e-2


def test_the_rotary_permutation_is_needed_for_bias_and_lora(tmp_path, tiny_llama):
    """Undo the permutation of the q bias or of one LoRA up matrix and the logits leave the reference."""
    shapes = Shapes(kv_heads=2)
    state, checkpoint, llama = build(tmp_path, tiny_llama, shapes)
    import_mu_llama(checkpoint, llama, tmp_path / "adapter")
    model = MusicLlama.load(tmp_path / "adapter", llama, dtype="fp32", device="cpu")
    tokens, stacks = inputs(shapes)
    expected = reference_logits(state, shapes, tokens, stacks)
    attention = model.model.model.layers[1].self_attn
    meta_names = "llama.layers.1.attention."
    for parameter, meta, heads in (
            (attention.q_proj.base_layer.bias, state[meta_names + "wq.bias"], shapes.heads),
            (attention.q_proj.lora_B["default"].weight, state[meta_names + "lora_wq_l2.weight"], shapes.heads),
            (attention.k_proj.lora_B["default"].weight, state[meta_names + "lora_wk_l2.weight"], shapes.kv_heads)):
        with torch.no_grad():
            assert torch.equal(parameter, meta_to_hf_rows(meta, heads))
            parameter.copy_(meta)
            assert (model.logits(tokens, stacks) - expected).abs().max() > 1e-4
            parameter.copy_(meta_to_hf_rows(meta, heads))
    torch.testing.assert_close(model.logits(tokens, stacks), expected, atol=1e-5, rtol=0)


def test_llama1_era_names_and_a_prefix_for_every_layer(tmp_path, tiny_llama):
    shapes = Shapes(adapted=4)
    state, checkpoint, llama = build(tmp_path, tiny_llama, shapes, prefix="mert_")
    report = import_mu_llama(checkpoint, llama, tmp_path / "adapter")
    assert report.legacy_names and report.llama_matches and report.config.adapted_layers == 4
    model = MusicLlama.load(tmp_path / "adapter", llama, dtype="fp32", device="cpu")
    tokens, stacks = inputs(shapes)
    torch.testing.assert_close(model.logits(tokens, stacks), reference_logits(state, shapes, tokens, stacks, "mert_"),
                               atol=1e-5, rtol=0)


def test_frozen_weights_that_differ_are_reported(tmp_path, tiny_llama):
    shapes = Shapes()
    state = random_state(shapes)
    checkpoint = save_released(tmp_path / "checkpoint.pth", state)
    other = dict(state)
    other["llama.layers.2.attention.wk.weight"] = state["llama.layers.2.attention.wk.weight"] * 1.01
    llama = write_hf_llama(tmp_path / "llama", other, shapes, tiny_llama)
    report = import_mu_llama(checkpoint, llama, tmp_path / "adapter")
    assert not report.llama_matches
    assert len(report.differing) == 1 and report.differing[0].startswith("llama.layers.2.attention.wk.weight")
    assert (tmp_path / "adapter" / "adapter.json").is_file()


def test_adapter_folder_holds_only_the_trained_part(tmp_path, tiny_llama):
    from safetensors import safe_open

    shapes = Shapes()
    _, checkpoint, llama = build(tmp_path, tiny_llama, shapes)
    import_mu_llama(checkpoint, llama, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter.json", "adapter.safetensors"]
    with safe_open(str(tmp_path / "adapter" / "adapter.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert not any(n.endswith(("q_proj.weight", "embed_tokens.weight", "lm_head.weight")) for n in names)
    assert {"adapter.gates", "adapter.prefix.weight", "llm.norm.weight",
            "llm.layers.0.self_attn.q_proj.lora_B"} <= names
    encoder = json.loads((tmp_path / "adapter" / "adapter.json").read_text())["encoder"]
    assert (encoder["hidden_states"], encoder["hidden_size"]) == (5, 24)  # without --mert: the shape only
    assert encoder["config_hash"] == encoder["weights_hash"] == ""


def test_files_that_are_not_mu_llama_checkpoints_get_a_clear_error(tmp_path, tiny_llama):
    shapes = Shapes()
    _, _, llama = build(tmp_path, tiny_llama, shapes)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(MullamaError, match="not a PyTorch checkpoint"):
        import_mu_llama(text, llama, tmp_path / "out")
    plain = tmp_path / "plain.pth"
    torch.save({"model": {"layer.weight": torch.zeros(2)}, "epoch": 1}, plain)
    with pytest.raises(MullamaError, match="not a MU-LLaMA checkpoint.*no mu_mert_agg"):
        import_mu_llama(plain, llama, tmp_path / "out")
    hostile = tmp_path / "hostile.pth"
    torch.save({"model": {}, "args": datetime.timedelta(days=1)}, hostile)  # not on the allow-list
    with pytest.raises(MullamaError, match="safe load.*refuses it: it pickles datetime.timedelta"):
        import_mu_llama(hostile, llama, tmp_path / "out")
    with pytest.raises(MullamaError, match="does not exist"):
        import_mu_llama(tmp_path / "missing.pth", llama, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_for_another_llama_is_refused(tmp_path, tiny_llama):
    shapes = Shapes()
    _, checkpoint, _ = build(tmp_path, tiny_llama, shapes)
    other = write_hf_llama(tmp_path / "wide", random_state(Shapes(dim=128)), Shapes(dim=128), tiny_llama)
    with pytest.raises(MullamaError, match="expected"):
        import_mu_llama(checkpoint, other, tmp_path / "out")
