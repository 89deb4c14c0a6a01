"""Encoder kinds: a registry by kind and by option, reached by planning and reading alike; a clash is refused."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest

from mullama.encoder_identity import AUDIO, IMAGE, MERT, VIDEO, VIT, VIVIT, EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.config import ENCODER_OPTIONS, ExtractConfig
from mullama.extract.encoder import KINDS, EncoderKind, register
from mullama.extract.kinds import encoder_kind, kind_of_option, read_encoder, registered_kinds
from mullama.extract.mert import MertSpec
from mullama.extract.plan import plan_extraction, read_spec
from mullama.extract.reader import decode_clip
from mullama.store import StoreSettings

FAKE_IDENTITY = EncoderIdentity("fake", "c", "w", sample_rate=8000, hidden_states=2, hidden_size=4, modality="smell",
                                kind="fake")


@dataclass(frozen=True)
class FakeSpec:
    """A kind that exists only in this test: its folder is any folder, and it refuses windows over 5 s."""

    folder: Path
    identity: EncoderIdentity = FAKE_IDENTITY
    suffixes = frozenset({".smell"})
    decoder = staticmethod(decode_clip)

    @classmethod
    def read(cls, folder: str | Path) -> "FakeSpec":
        if not Path(folder).is_dir():
            raise MullamaError(f"fake folder {folder} does not exist")
        return cls(Path(folder))

    def decode_settings(self, settings: StoreSettings) -> float:
        return settings.window_seconds

    def store_settings(self, requested: StoreSettings) -> StoreSettings:
        return dataclasses.replace(requested, pooling="a sniff")

    def check_settings(self, settings: StoreSettings) -> None:
        if settings.window_seconds > 5:
            raise MullamaError(f"--window-seconds {settings.window_seconds}: a fake sniffs at most 5 s")

    def load(self, device: str = "auto", precision: str = "auto"):
        raise AssertionError("planning never loads weights")


@pytest.fixture
def fake_kind(monkeypatch):
    """The fake kind registered, with its --fake option, for one test."""
    kind = register(EncoderKind(name="fake", modality="smell", option="fake", read=FakeSpec.read))
    monkeypatch.setitem(ENCODER_OPTIONS, "fake", "smells")
    yield kind
    del KINDS["fake"]


def test_the_registry_holds_each_kind_once_by_name_modality_and_option():
    assert [(k.name, k.modality, k.option) for k in registered_kinds()] == [
        (MERT, AUDIO, "mert"), (VIT, IMAGE, "vit"), (VIVIT, VIDEO, "vivit")]
    # extract/config.py names the options without importing an encoder: it must name exactly the registry's
    assert list(ENCODER_OPTIONS) == [k.option for k in registered_kinds()]
    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    assert all(option in fields for option in ENCODER_OPTIONS)
    assert encoder_kind(VIT).option == "vit" and kind_of_option("vivit").name == VIVIT
    with pytest.raises(MullamaError, match="unknown encoder kind 'clap'; known: mert, vit, vivit"):
        encoder_kind("clap")


def test_a_new_kind_registered_elsewhere_resolves_through_read_spec_and_the_plan(fake_kind, tmp_path):
    folder = tmp_path / "fake-encoder"
    folder.mkdir()
    assert isinstance(read_encoder("fake", folder), FakeSpec) and kind_of_option("fake") is fake_kind
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "rose.smell").write_bytes(b"sweet")
    (inputs / "tone.wav").write_bytes(b"not for this kind")
    config = ExtractConfig(input=str(inputs), store=str(tmp_path / "store"), window_seconds=9.0)
    config.fake = str(folder)  # the field a new kind adds to ExtractConfig
    spec = read_spec(config)
    assert isinstance(spec, FakeSpec) and spec.folder == folder
    with pytest.raises(MullamaError, match="a fake sniffs at most 5 s"):  # its own settings check, before any work
        plan_extraction(config, spec, "fp32")
    config.window_seconds = 2.0
    plan = plan_extraction(config, spec, "fp32")
    assert plan.decode == 2.0 and plan.decoder is decode_clip and [s.clip_id for s in plan.todo] == ["rose.smell"]
    assert plan.store.encoder == FAKE_IDENTITY and plan.store.settings.pooling == "a sniff"
    config.mert = "somewhere"
    with pytest.raises(MullamaError, match=r"give exactly one encoder folder: --mert \(audio\), --vit \(images\), "
                                           r"--vivit \(videos\) or --fake \(smells\); got --mert, --fake"):
        read_spec(config)


def test_a_second_kind_of_the_same_name_or_option_is_refused():
    with pytest.raises(ValueError, match="encoder kind 'mert' \\(--wave\\) clashes with the registered kind 'mert'"):
        register(EncoderKind(name=MERT, modality=AUDIO, option="wave", read=MertSpec.read))
    with pytest.raises(ValueError, match="clashes with the registered kind 'vit' \\(--vit\\)"):
        register(EncoderKind(name="vit2", modality=IMAGE, option="vit", read=MertSpec.read))
    assert list(KINDS) == [MERT, VIT, VIVIT]


def test_the_config_names_one_encoder_folder_and_mert_refuses_windows_below_its_receptive_field(tiny_mert, tmp_path):
    config = ExtractConfig(input=str(tmp_path), store=str(tmp_path / "store"))
    with pytest.raises(MullamaError, match=r"give exactly one encoder folder: --mert \(audio\), --vit \(images\) or "
                                           r"--vivit \(videos\); got none"):
        config.encoder_folder()
    config = dataclasses.replace(config, mert=str(tiny_mert), window_seconds=0.001)
    assert config.encoder_folder() == ("mert", str(tiny_mert))
    with pytest.raises(MullamaError, match=r"--window-seconds 0.001: shorter than the encoder's receptive field "
                                           r"\(\d+ samples, 0\.\d{4} s\); no window could be encoded"):
        plan_extraction(config, read_spec(config), "fp32")
    assert not (tmp_path / "store").exists()  # refused before the store was made
