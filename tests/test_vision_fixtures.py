"""Random-weight ViT and ViViT folders: the published token counts, and tiny folders that load and run."""

from __future__ import annotations

import subprocess
import sys

import torch
from transformers import ViTConfig, ViTModel, VivitConfig, VivitModel

from mullama.fixtures.vision import tokens_per_item


def test_published_shapes_give_the_published_token_counts():
    assert tokens_per_item(ViTConfig()) == 197  # ViT-B/16 at 224: 14 x 14 patches + the class token
    assert tokens_per_item(VivitConfig()) == 3137  # ViViT-B: 16 x 14 x 14 tubelets + the class token
    assert (ViTConfig().hidden_size, VivitConfig().hidden_size) == (768, 768)


def test_tiny_folders_load_and_encode(tmp_path):
    for command, model_class, pixels in (("init-vit", ViTModel, torch.zeros(2, 3, 32, 32)),
                                         ("init-vivit", VivitModel, torch.zeros(2, 4, 3, 32, 32))):
        result = subprocess.run([sys.executable, "-m", "mullama.cli", "models", command, str(tmp_path / command)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        model = model_class.from_pretrained(str(tmp_path / command), add_pooling_layer=False)
        hidden = model(pixels).last_hidden_state
        assert hidden.shape == (2, tokens_per_item(model.config), 32)
        assert "RANDOM weights" in (tmp_path / command / "config.json").read_text()
