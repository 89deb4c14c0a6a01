"""Memory of 7B MU-LLaMA inference, computed from the real module shapes on the meta device (no GPU needed).

    python benchmarks/model_memory.py [--prompt-tokens 128] [--answer-tokens 512] [--batch 1]

Counts every parameter of LLaMA-2-7B (transformers' LlamaForCausalLM), of mullama's MusicAdapter for
MERT-330M stacks and of the stage-2 biases and LoRA, then adds the KV cache. Compares with the published
code's footprint: fp16 LLaMA, fp32 adapter, fp32 MERT in memory and an fp32 KV cache for 8192 positions.
"""

from __future__ import annotations

import argparse

import torch
from transformers import HubertModel

from mullama.fixtures.llama import llama_config
from mullama.fixtures.mert import mert_config
from mullama.model.adapter import MusicAdapter
from mullama.model.llm import MusicLlamaForCausalLM
from mullama.model.settings import AdapterConfig, default_adapted_layers
from mullama.model.stage2 import add_stage2, stage2_parameters

GB = 1e9
PUBLISHED_MAX_SEQ_LEN = 8192


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt incl. question (MU-LLaMA's: ~70-100)")
    parser.add_argument("--answer-tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    config = llama_config("7b", 32000)
    with torch.device("meta"):
        model = MusicLlamaForCausalLM(config)
        llama = count(model.parameters())
        adapter_config = AdapterConfig(hidden_states=25, encoder_hidden_size=1024, d_model=config.hidden_size,
                                       num_heads=config.num_attention_heads, num_layers=config.num_hidden_layers,
                                       adapted_layers=default_adapted_layers(config.num_hidden_layers))
        adapter = count(MusicAdapter(adapter_config).parameters())
        norms = count(stage2_parameters(model).values())
        add_stage2(model, biases=True, lora_rank=16)
        stage2 = count(stage2_parameters(model).values()) - norms  # biases + LoRA; norms are LLaMA's own
        mert = count(HubertModel(mert_config("330m")[0]).parameters())

    kv_width = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    layers = config.num_hidden_layers
    tokens = args.prompt_tokens + args.answer_tokens
    kv_ours = 2 * layers * tokens * kv_width * 2 * args.batch  # K and V, bf16
    kv_published = 2 * layers * PUBLISHED_MAX_SEQ_LEN * kv_width * 4  # fp32, allocated up front, batch 1

    ours = {"LLaMA-2-7B weights, bf16": llama * 2, "music adapter, bf16": adapter * 2,
            "stage-2 biases + LoRA r16, bf16": stage2 * 2,
            f"KV cache, bf16, {tokens} positions x batch {args.batch}": kv_ours}
    published = {"LLaMA-2-7B weights, fp16": llama * 2, "music adapter, fp32": adapter * 4,
                 "stage-2 biases + LoRA r16, fp32": stage2 * 4, "MERT-v1-330M, fp32": mert * 4,
                 f"KV cache, fp32, {PUBLISHED_MAX_SEQ_LEN} positions": kv_published}

    print(f"parameters: LLaMA-2-7B {llama:,}; music adapter {adapter:,}; stage-2 biases + LoRA {stage2:,}; "
          f"MERT-v1-330M {mert:,}")
    for title, table in (("mullama (features from the store, no MERT in memory)", ours),
                         ("published code (26-30 GB reported)", published)):
        print(f"\n{title}")
        for name, size in table.items():
            print(f"  {name:<48} {size / GB:6.2f} GB")
        print(f"  {'total before activations and CUDA context':<48} {sum(table.values()) / GB:6.2f} GB")


if __name__ == "__main__":
    main()
