"""Pre-train a tiny LLaMA on text alone, before it is frozen under the music adapter.

LLaMA-2 knew language long before MU-LLaMA trained its adapter; a random tiny LLaMA knows nothing.
The demo and the listening test therefore first teach the tiny model the corpus' question/answer
text (no audio), so that the adapter's job is the same as in the paper: bring in what only the audio
tells. The model never sees the stacks here.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from mullama.data.musicqa import read_musicqa
from mullama.model.prompts import tokenize_example


def pretrain_text_lm(llama_dir: str | Path, qa_files: Sequence[str | Path], out: str | Path, steps: int = 400,
                     batch_size: int = 16, lr: float = 3e-3, max_length: int = 96, prompt_format: str = "clean",
                     seed: int = 0) -> Path:
    """Train every weight of the LLaMA at `llama_dir` on the QA text and save it (with its tokenizer) to `out`."""
    torch.manual_seed(seed)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    model = LlamaForCausalLM.from_pretrained(str(llama_dir), dtype=torch.float32)
    pairs = [pair for path in qa_files for pair in read_musicqa(path)]
    sequences = [tokenize_example(tokenizer, p.question, p.answer, prompt_format, max_length).input_ids for p in pairs]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.train()
    for _ in range(steps):
        batch = rng.sample(sequences, min(batch_size, len(sequences)))
        width = max(len(s) for s in batch)
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in batch])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    out = Path(out)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config["mullama_text_pretrained"] = (f"{steps} steps on the text of {', '.join(str(p) for p in qa_files)}; "
                                         f"final loss {float(loss.detach()):.3f}")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
