"""Random-weight LLaMA folders with a real SentencePiece tokenizer, for the demo, tests and benchmarks.

No weights can be downloaded on the project's machines. `tiny` is a laptop-speed Llama whose tokenizer is
trained offline on the given text (the demo corpus's questions and answers); `7b` has LLaMA-2-7B's shapes
for memory and speed work (its 32000-row embedding outgrows a tokenizer trained on little text: ids the
tokenizer lacks decode to nothing, so count generated tokens, not characters, when benchmarking).
Weights are streamed into safetensors shards, so even 7b never sits in memory whole. The folder loads
with `AutoTokenizer.from_pretrained` and `LlamaForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

from mullama.data.musicqa import read_musicqa
from mullama.errors import MullamaError
from mullama.model.prompts import TEMPLATES

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4,
             "max_position_embeddings": 2048, "_vocab": 1024, "_dtype": torch.float32},
    # The demo's listening model: deep enough that the prompt injected in the last 5 of 8 layers can steer
    # single answer words (4 layers plateau far lower, even with perfect features).
    "mini": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 8, "num_attention_heads": 4,
             "max_position_embeddings": 2048, "_vocab": 1024, "_dtype": torch.float32},
    # LLaMA-2-7B: 32 x 4096, FFN 11008, 32 heads, vocab 32000, 4096 positions; bf16 on disk (13.5 GB).
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "max_position_embeddings": 4096, "_vocab": 32000, "_dtype": torch.bfloat16},
}
SHARD_BYTES = 2 * 1024 ** 3
# Used when no corpus is given: the prompt templates and a few lines of music description.
BUILT_IN_TEXT = """\
The music is a slow chorale for four voices in a minor key, with a calm and solemn mood.
This is a lively fiddle tune in a major key at a fast tempo; it sounds cheerful and danceable.
A solo piano plays a gentle melody over soft chords; the piece feels peaceful and reflective.
The string quartet plays a baroque piece with a steady pulse and clear counterpoint.
The recording features an organ, a flute, a violin and a cello playing together.
The tempo is moderate, around 100 beats per minute, and the rhythm is regular.
It could be played in a church, at a folk festival, or as background music in a film.
What instruments can you hear? Describe the audio in detail. What is the mood of the music?
What can be inferred from the audio? What do you hear in the audio? What genre is this music?
"""


def corpus_lines(path: str | Path | None) -> list[str]:
    """Text to train the tokenizer on: a text file, or every question and answer of a MusicQA JSON."""
    lines = [template.format(question="") for template in TEMPLATES.values()]
    if not path:
        return lines + BUILT_IN_TEXT.splitlines()
    path = Path(path)
    if not path.is_file():
        raise MullamaError(f"tokenizer corpus {path} does not exist")
    if path.suffix.lower() == ".json":
        pairs = read_musicqa(path)
        return lines + [text for pair in pairs for text in (pair.question, pair.answer)]
    text = path.read_text(errors="replace").splitlines()
    if not any(line.strip() for line in text):
        raise MullamaError(f"tokenizer corpus {path} is empty")
    return lines + text


def train_tokenizer(lines: list[str], vocab_size: int) -> bytes:
    """A LLaMA-style SentencePiece BPE model: byte fallback, unk 0, bos 1, eos 2, no pad, digits split.

    The vocabulary stops short of `vocab_size` when the text has fewer merges to offer.
    """
    sentences = [line for line in lines if line.strip()]
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, model_type="bpe", vocab_size=vocab_size,
            hard_vocab_limit=False, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            num_threads=1, minloglevel=2)
    except RuntimeError as exc:
        raise MullamaError(f"SentencePiece could not train a tokenizer on the corpus: {exc}") from None
    return model.getvalue()


def write_tokenizer(out: Path, model_proto: bytes) -> int:
    """tokenizer.model plus the Hugging Face files (BOS added, EOS not, like LLaMA-2's); returns the vocab size."""
    (out / "tokenizer.model").write_bytes(model_proto)
    tokenizer = LlamaTokenizer.from_pretrained(str(out), add_bos_token=True, add_eos_token=False)
    tokenizer.save_pretrained(str(out))
    return len(tokenizer)


def llama_config(size: str, vocab_size: int, kv_heads: int = 0) -> LlamaConfig:
    if size not in SIZES:
        raise MullamaError(f"unknown LLaMA size {size!r}; choose one of {', '.join(SIZES)}")
    fields = {k: v for k, v in SIZES[size].items() if not k.startswith("_")}
    heads = fields["num_attention_heads"]
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise MullamaError(f"{heads} attention heads cannot be grouped over {kv_heads} key/value heads")
    return LlamaConfig(vocab_size=vocab_size, num_key_value_heads=kv_heads, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=None, tie_word_embeddings=False,
                       initializer_range=0.02, dtype=SIZES[size]["_dtype"], **fields)


def parameter_shapes(config: LlamaConfig) -> dict[str, torch.Size]:
    """Every weight of the model, from a meta-device instance (no memory)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return {name: p.shape for name, p in model.named_parameters()}


def plan_shards(shapes: dict[str, torch.Size], itemsize: int, limit: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = shape.numel() * itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(out: Path, config: LlamaConfig, seed: int, shard_bytes: int = SHARD_BYTES) -> int:
    """Normal(0, initializer_range) matrices and unit norms, one shard in memory at a time; returns bytes."""
    dtype = config.dtype if isinstance(config.dtype, torch.dtype) else getattr(torch, str(config.dtype))
    shapes = parameter_shapes(config)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(shapes, itemsize, shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for number, names in enumerate(shards, start=1):
        file = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shapes[name], dtype=dtype)
            else:
                values = torch.randn(shapes[name], generator=generator) * config.initializer_range
                tensors[name] = values.to(dtype)
            weight_map[name] = file
            total += tensors[name].numel() * itemsize
        save_file(tensors, str(out / file), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def write_random_llama(out: str | Path, size: str = "tiny", corpus: str | Path | None = None, seed: int = 0,
                       vocab_size: int = 0, kv_heads: int = 0, shard_bytes: int = SHARD_BYTES,
                       echo: Callable[[str], None] = lambda _: None) -> Path:
    """Write a random-weight LLaMA folder of `size` with a tokenizer trained on `corpus`; return its path."""
    out = Path(out)
    if size not in SIZES:
        raise MullamaError(f"unknown LLaMA size {size!r}; choose one of {', '.join(SIZES)}")
    out.mkdir(parents=True, exist_ok=True)
    wanted = vocab_size or SIZES[size]["_vocab"]
    tokens = write_tokenizer(out, train_tokenizer(corpus_lines(corpus), wanted))
    # Small models' embeddings match their tokenizer; 7b keeps LLaMA-2's 32000 rows whatever the corpus gave.
    small = size in ("tiny", "mini")
    config = llama_config(size, tokens if small else SIZES[size]["_vocab"], kv_heads)
    if not small:
        params = sum(s.numel() for s in parameter_shapes(config).values())
        echo(f"writing {params / 1e9:.2f} B random parameters ({params * 2 / 1e9:.1f} GB in bf16); this takes minutes")
    write_weights(out, config, seed, shard_bytes)
    data = config.to_dict()
    data.update({"architectures": ["LlamaForCausalLM"], "_name_or_path": f"mullama-random-llama-{size}",
                 "mullama_random_weights": f"RANDOM weights (seed {seed}) with LLaMA {size} shapes; "
                                           "not a trained model"})
    (out / "config.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return out
