"""Random-weight MERT folders with the real models' shapes, in the hub's remote-code layout.

No weights can be downloaded on the project's machines, so the demo, tests and benchmarks use
these. The folder is what `MertEncoder.load` expects of a real checkpoint: `model_type: mert_model`,
legacy `weight_g`/`weight_v` names for the positional convolution, a preprocessor_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

from mullama.errors import MullamaError

SAMPLE_RATE = 24000
COMMON: dict[str, Any] = {
    "conv_dim": [512] * 7, "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_bias": False, "feat_extract_norm": "group", "feat_extract_activation": "gelu",
    "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16, "feat_proj_layer_norm": True,
    "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0,
    "layerdrop": 0.0, "mask_time_prob": 0.0,
}
SIZES: dict[str, dict[str, Any]] = {
    # A laptop-speed stand-in with the real conv geometry (receptive field 400, stride 320).
    "tiny": {"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 256,
             "conv_dim": [64] * 7, "num_conv_pos_embedding_groups": 16, "do_stable_layer_norm": False,
             "attention_relax": -1.0, "_do_normalize": False},
    # MERT-v1-95M: 12 x 768, post-LN, 13 hidden states.
    "95m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "do_stable_layer_norm": False, "attention_relax": -1.0, "_do_normalize": False},
    # MERT-v1-330M: 24 x 1024, pre-LN, 25 hidden states.
    "330m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
             "do_stable_layer_norm": True, "attention_relax": 32.0, "_do_normalize": True},
}
LEGACY_NAMES = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def mert_config(size: str) -> tuple[HubertConfig, dict[str, Any]]:
    if size not in SIZES:
        raise MullamaError(f"unknown MERT size {size!r}; choose one of {', '.join(SIZES)}")
    fields = {**COMMON, **SIZES[size]}
    do_normalize = fields.pop("_do_normalize")
    extra = {"attention_relax": fields.pop("attention_relax")}
    return HubertConfig(**fields), {"do_normalize": do_normalize, **extra}


def legacy_state_dict(model: HubertModel) -> dict[str, torch.Tensor]:
    """The hub checkpoints' key names (pre-parametrization weight norm)."""
    renamed = {}
    for key, tensor in model.state_dict().items():
        for new, old in LEGACY_NAMES.items():
            key = key.replace(new, old)
        renamed[key] = tensor.contiguous()
    return renamed


def write_random_mert(out: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight MERT folder of `size` to `out` and return its path."""
    out = Path(out)
    config, extra = mert_config(size)
    torch.manual_seed(seed)
    model = HubertModel(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    save_file(legacy_state_dict(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    hub = config.to_dict()
    hub.update({
        "model_type": "mert_model",
        "architectures": ["MERTModel"],
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        "feature_extractor_cqt": False,
        "feature_extractor_cqt_bins": 336,
        "deepnorm": False,
        "conv_pos_batch_norm": False,
        "attention_relax": extra["attention_relax"],
        "sample_rate": SAMPLE_RATE,
        "_name_or_path": f"mullama-random-mert-{size}",
        "mullama_random_weights": f"RANDOM weights (seed {seed}) with MERT-{size} shapes; not a trained model",
    })
    (out / "config.json").write_text(json.dumps(hub, indent=2, sort_keys=True))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                             do_normalize=extra["do_normalize"], return_attention_mask=True).save_pretrained(out)
    return out
