"""Random-weight MusicGen folders (issue "MuMu-LLaMA, part 2", first step): the published shapes, and a tiny
folder that transformers loads with its processor, generating audio from text and from outside embeddings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from mullama.fixtures.musicgen import musicgen_config


def parameters_in_millions(size: str) -> dict[str, float]:
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = MusicgenForConditionalGeneration(musicgen_config(size))
    parts = {part: sum(p.numel() for p in getattr(model, part).parameters()) / 1e6
             for part in ("decoder", "text_encoder", "audio_encoder")}
    return {**parts, "all": sum(p.numel() for p in model.parameters()) / 1e6}


def test_published_sizes():
    small, medium = parameters_in_millions("small"), parameters_in_millions("medium")
    # the decoders are the "300M" and "1.5B" language models of the paper with their cross-attention, codebook
    # embeddings and heads; both share T5-base (110 M as an encoder) and the 32 kHz EnCodec (58 M)
    assert small["all"] == pytest.approx(587.6, abs=0.1) and medium["all"] == pytest.approx(2006.0, abs=0.1)
    assert small["text_encoder"] == medium["text_encoder"] == pytest.approx(109.6, abs=0.1)
    config = musicgen_config("small")
    assert (config.decoder.hidden_size, config.decoder.num_hidden_layers, config.decoder.num_codebooks) == (1024, 24, 4)
    assert config.audio_encoder.frame_rate == 50 and config.audio_encoder.sampling_rate == 32000


def test_tiny_folder_generates_from_text_and_from_outside_embeddings(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    (tmp_path / "texts.txt").write_text("a calm piano melody\nloud rock guitars and drums\n\n")
    result = subprocess.run([sys.executable, "-m", "mullama.cli", "models", "init-musicgen", str(tmp_path / "mg"),
                             "--text", str(tmp_path / "texts.txt")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    model = MusicgenForConditionalGeneration.from_pretrained(str(tmp_path / "mg")).eval()
    processor = AutoProcessor.from_pretrained(str(tmp_path / "mg"))
    assert model.generation_config.guidance_scale == 3.0
    assert "RANDOM weights" in (tmp_path / "mg" / "config.json").read_text()
    inputs = processor(text=["a calm piano melody", "loud rock guitars"], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    audio = model.generate(**inputs, max_new_tokens=12)  # sampled, with classifier-free guidance
    frames = 12 - 3  # the delay pattern of 4 codebooks costs 3 steps
    assert audio.shape == (2, 1, frames * 640)  # 32 kHz at 50 frames a second
    # MuMu-LLaMA's path: conditioning from outside the text encoder (its projector's output)
    first, second = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 6, 32)
    start = torch.full((4, 3), model.generation_config.decoder_start_token_id)
    with torch.no_grad():
        logits = [model(encoder_outputs=(e,), decoder_input_ids=start).logits for e in (first, second)]
    assert not torch.allclose(logits[0], logits[1])
    assert model.generate(encoder_outputs=(first,), max_new_tokens=12, guidance_scale=1.0).shape == (1, 1, frames * 640)
    missing = subprocess.run([sys.executable, "-m", "mullama.cli", "models", "init-musicgen", str(tmp_path / "x"),
                              "--text", str(tmp_path / "none.txt")], capture_output=True, text=True, env=env,
                             timeout=120)
    assert missing.returncode == 2 and "--text" in missing.stderr and "Traceback" not in missing.stderr
