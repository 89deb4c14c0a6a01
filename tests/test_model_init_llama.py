"""Random-weight LLaMA folders with a SentencePiece tokenizer trained offline."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError
from mullama.fixtures.llama import llama_config, parameter_shapes, write_random_llama


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_a_folder_transformers_loads_with_a_tokenizer_from_the_corpus(tmp_path):
    qa = tmp_path / "qa.json"
    write_musicqa(qa, [QAPair(f"{i:06d}.wav", "Which instrument plays?", f"A harpsichord plays piece {i}.")
                       for i in range(40)])
    result = run_cli("models", "init-llama", str(tmp_path / "llama"), "--tokenizer-corpus", str(qa),
                     "--kv-heads", "2", "--vocab-size", "400")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "llama"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert model.config.vocab_size == len(tokenizer) <= 400 and model.config.num_key_value_heads == 2
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    ids = tokenizer("A harpsichord plays").input_ids
    assert ids[0] == 1 and len(ids) <= 4  # corpus words became whole pieces
    assert tokenizer.decode(tokenizer("naïve ♪ 1234").input_ids, skip_special_tokens=True) == "naïve ♪ 1234"
    config = json.loads((folder / "config.json").read_text())
    assert "RANDOM" in config["mullama_random_weights"]
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    assert abs(float(model.model.layers[0].mlp.up_proj.weight.detach().std()) - 0.02) < 0.002


def test_sharded_weights_load_and_are_reproducible(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a slow chorale in a minor key\na fast fiddle tune\n" * 20)
    one = write_random_llama(tmp_path / "one", "tiny", corpus, seed=5, shard_bytes=150_000)
    two = write_random_llama(tmp_path / "two", "tiny", corpus, seed=5)
    index = json.loads((one / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    a = LlamaForCausalLM.from_pretrained(one, dtype=torch.float32).state_dict()
    b = LlamaForCausalLM.from_pretrained(two, dtype=torch.float32).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_7b_has_llama2_7b_shapes():
    config = llama_config("7b", 32000)
    shapes = parameter_shapes(config)
    assert sum(s.numel() for s in shapes.values()) == 6_738_415_616
    assert shapes["model.layers.31.mlp.gate_proj.weight"] == (11008, 4096) and config.dtype == torch.bfloat16


def test_mistakes_are_reported(tmp_path):
    with pytest.raises(MullamaError, match="unknown LLaMA size"):
        write_random_llama(tmp_path / "x", "13b")
    with pytest.raises(MullamaError, match="does not exist"):
        write_random_llama(tmp_path / "x", "tiny", tmp_path / "missing.txt")
    with pytest.raises(MullamaError, match="grouped"):
        write_random_llama(tmp_path / "x", "tiny", kv_heads=3)
    result = run_cli("models", "init-llama", str(tmp_path / "y"), "--size", "13b")
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
