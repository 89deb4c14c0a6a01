import json
import shutil

import numpy as np
import pytest
import torch
from transformers import HubertModel, Wav2Vec2FeatureExtractor

from mullama.errors import MullamaError
from mullama.extract.mert import ConvGeometry, MertEncoder
from mullama.fixtures.mert import legacy_state_dict, mert_config
from tests.helpers import tone


def small_config(pre_ln: bool):
    config, _ = mert_config("tiny")
    config.do_stable_layer_norm = pre_ln
    return config


@pytest.fixture
def hubert_folder(tmp_path):
    """A plain transformers HubertModel folder (pre-LN like MERT-330M, normalising input)."""
    torch.manual_seed(3)
    model = HubertModel(small_config(pre_ln=True)).eval()
    folder = tmp_path / "hubert"
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["sample_rate"] = 24000
    (folder / "config.json").write_text(json.dumps(config))
    return folder, model


def to_remote_code_layout(hubert_dir, model, out):
    """What the hub ships: model_type mert_model, remote-code auto_map, pickle weights with weight_g/weight_v."""
    out.mkdir()
    config = json.loads((hubert_dir / "config.json").read_text())
    config.update(model_type="mert_model", architectures=["MERTModel"], feature_extractor_cqt=False,
                  deepnorm=False, attention_relax=32.0, conv_pos_batch_norm=False,
                  auto_map={"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"})
    (out / "config.json").write_text(json.dumps(config))
    shutil.copy(hubert_dir / "preprocessor_config.json", out)
    state = legacy_state_dict(model)
    assert any(k.endswith("weight_g") for k in state)
    torch.save(state, out / "pytorch_model.bin")
    return out


def test_remote_code_layout_loads_and_matches_hubert(hubert_folder, tmp_path):
    folder, model = hubert_folder
    remote = to_remote_code_layout(folder, model, tmp_path / "mert-remote")
    windows = [tone(1.5, 24000, 200.0, seed=1), tone(1.5, 24000, 300.0, seed=2)]
    from_hubert = MertEncoder.load(folder, device="cpu").encode(windows)
    from_remote = MertEncoder.load(remote, device="cpu").encode(windows)
    np.testing.assert_array_equal(from_hubert, from_remote)
    assert from_remote.shape == (2, model.config.num_hidden_layers + 1, model.config.hidden_size)


def test_stack_is_time_mean_of_every_hidden_state_with_final_norm(hubert_folder):
    """4.x semantics: the last hidden state of a pre-LN model is taken after the final LayerNorm."""
    folder, model = hubert_folder
    audio = tone(2.0, 24000, 150.0)
    stack = MertEncoder.load(folder, device="cpu").encode([audio])[0]
    normalised = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)  # the folder says do_normalize
    with torch.inference_mode():
        out = model(torch.from_numpy(normalised)[None], output_hidden_states=True)
    expected = torch.stack([h[0].mean(0) for h in out.hidden_states[:-1]] + [out.last_hidden_state[0].mean(0)])
    np.testing.assert_allclose(stack, expected.numpy(), atol=2e-5)
    pre_norm = out.hidden_states[-1][0].mean(0).numpy()
    assert not np.allclose(stack[-1], pre_norm, atol=1e-3)


@pytest.mark.parametrize("do_normalize", [True, False])
def test_folder_feature_extractor_settings_are_applied(tmp_path, do_normalize):
    """Releases differ in do_normalize; whatever the folder says is what runs."""
    config = small_config(pre_ln=False)
    config.feat_extract_norm = "layer"  # per-frame norm: an input offset survives, so normalising matters
    torch.manual_seed(5)
    model = HubertModel(config).eval()
    folder = tmp_path / "enc"
    model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=do_normalize).save_pretrained(folder)
    audio = tone(1.0, 24000, 400.0) * 3.0 + 0.5
    normalised = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    with torch.inference_mode():
        direct = {flag: model(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[1][0].mean(0)
                  for flag, x in ((True, normalised), (False, audio))}
    assert not torch.allclose(direct[True], direct[False], atol=1e-2)
    stack = MertEncoder.load(folder).encode([audio])[0]
    np.testing.assert_allclose(stack[1], direct[do_normalize].numpy(), atol=1e-5)


@pytest.mark.parametrize("flag", ["feature_extractor_cqt", "deepnorm", "conv_pos_batch_norm"])
def test_refuses_unsupported_mert_variants(hubert_folder, tmp_path, flag):
    folder, _ = hubert_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config[flag] = True
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(MullamaError, match=flag):
        MertEncoder.load(bad)


def test_clear_errors_for_missing_pieces(tmp_path, hubert_folder):
    with pytest.raises(MullamaError, match="does not exist"):
        MertEncoder.load(tmp_path / "nowhere")
    folder, _ = hubert_folder
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(MullamaError, match="preprocessor_config.json"):
        MertEncoder.load(folder)


def test_identity_and_geometry(tiny_mert):
    encoder = MertEncoder.load(tiny_mert)
    assert encoder.geometry == ConvGeometry(400, 320)
    assert [encoder.geometry.frames(24000 * s) for s in (1, 10, 30)] == [74, 749, 2249]
    assert encoder.identity.hidden_states == 4 and encoder.identity.hidden_size == 64
    assert encoder.identity.sample_rate == 24000 and len(encoder.identity.weights_hash) == 64
    with pytest.raises(ValueError, match="one length"):
        encoder.encode([np.zeros(1000, np.float32), np.zeros(1200, np.float32)])


def test_real_sizes_have_published_shapes():
    for size, layers, hidden, params in (("95m", 12, 768, 94e6), ("330m", 24, 1024, 315e6)):
        config, _ = mert_config(size)
        assert (config.num_hidden_layers, config.hidden_size) == (layers, hidden)
        with torch.device("meta"):
            model = HubertModel(config)
        assert abs(sum(p.numel() for p in model.parameters()) - params) / params < 0.01
