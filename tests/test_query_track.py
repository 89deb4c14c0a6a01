"""One query track -> its stack exactly as `mullama extract` stores it, the encoder checked before it loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mullama.errors import MullamaError
from mullama.extract.audio import load_audio
from mullama.extract.config import ExtractConfig
from mullama.extract.mert import MertEncoder
from mullama.extract.query_track import QueryTrack, read_checked
from mullama.extract.runner import run_local
from mullama.fixtures.vision import write_random_encoder
from mullama.encoder_identity import MERT, VIT, EncoderIdentity
from mullama.store import FeatureStore, StoreSettings
from tests.helpers import write_image, write_tone


def extracted(inputs: Path, store: Path, **encoder: str) -> FeatureStore:
    """One window per encoder call, as a query track encodes them: the stored stacks are then bit for bit."""
    run_local(ExtractConfig(input=str(inputs), store=str(store), window_seconds=1.0, min_window_seconds=0.5,
                            batch_size=1, workers=0, progress=False, **encoder))
    return FeatureStore.open(str(store))


def same_as(store: FeatureStore):
    """The check an index makes: the store's own encoder, or a refusal."""
    def check(identity: EncoderIdentity) -> None:
        if not identity.same_encoder(store.encoder):
            raise MullamaError(f"not the store's encoder: {identity.name}")
    return check


def test_a_files_stack_equals_the_stored_one_whole_windows_tail_and_upload(tiny_mert, tmp_path):
    audio = tmp_path / "audio"
    write_tone(audio / "long.flac", 2.7, 44100, 220.0, channels=2, seed=1)  # 3 windows: the 0.7 s tail is kept
    write_tone(audio / "tail.wav", 2.3, 22050, 330.0, seed=2)  # the 0.3 s tail is dropped
    write_tone(audio / "short.wav", 0.6, 24000, 440.0, seed=3)  # one short window
    store = extracted(audio, tmp_path / "store", mert=str(tiny_mert))
    settings = store.effective_settings()
    track = QueryTrack.open(MERT, tiny_mert, same_as(store), settings, "cpu")
    assert track.identity == store.encoder and track.encoder.precision == settings.precision
    for clip in ("long.flac", "tail.wav", "short.wav"):
        stored = store.get([clip])[0].astype(np.float32)
        np.testing.assert_array_equal(track.stack(audio / clip), stored)
        upload = load_audio(audio / clip, track.sample_rate, track.min_samples)  # what the server decodes
        np.testing.assert_array_equal(track.stack_of_samples(upload), stored)
    (audio / "broken.wav").write_bytes(b"not audio")
    with pytest.raises(MullamaError, match=r"cannot use .*broken.wav as a query: not_audio: "):
        track.stack(audio / "broken.wav")


def test_the_identity_is_checked_before_any_weights_load(tiny_mert, monkeypatch):
    def refuse(identity):
        raise MullamaError(f"not trained with {identity.name}")

    def never(*args, **kwargs):
        raise AssertionError("weights loaded before the identity was checked")

    monkeypatch.setattr(MertEncoder, "load", classmethod(never))
    with pytest.raises(MullamaError, match="not trained with"):
        QueryTrack.open(MERT, tiny_mert, refuse, StoreSettings(), "cpu")
    assert read_checked(MERT, tiny_mert, None).identity.kind == MERT


def test_an_images_matrix_equals_the_stored_one(tmp_path):
    vit = write_random_encoder(VIT, tmp_path / "vit", "tiny", seed=3)
    write_image(tmp_path / "images" / "a.png", seed=1, size=(40, 56))
    store = extracted(tmp_path / "images", tmp_path / "store", vit=str(vit))
    track = QueryTrack.open(VIT, vit, same_as(store), store.effective_settings(), "cpu")
    np.testing.assert_array_equal(track.stack(tmp_path / "images" / "a.png"), store.get(["a.png"])[0])
    with pytest.raises(MullamaError, match="a vit encoder takes files, not decoded audio"):
        track.stack_of_samples(np.zeros(16000, np.float32))
