"""Every model kind reads its folder's config.json through one helper: a missing or broken file is one line."""

from pathlib import Path

import pytest

from mullama.errors import MullamaError
from mullama.extract.encoder_files import read_config
from mullama.model.llama_files import read_raw_config
from mullama.music.musicgen import read_kind

READERS = [(read_raw_config, "is not a Hugging Face LLaMA folder", "init-llama"),
           (read_kind, "is not a MusicGen folder", "init-musicgen"),
           (read_config, "is not an encoder folder", "")]


@pytest.mark.parametrize(("reader", "says", "hint"), READERS)
def test_a_folder_without_config_names_itself_and_how_to_make_one(tmp_path: Path, reader, says, hint):
    with pytest.raises(MullamaError) as error:
        reader(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path} {says}: config.json is missing") and "\n" not in message
    assert hint in message


@pytest.mark.parametrize(("reader", "says", "hint"), READERS)
def test_a_broken_config_is_named_as_invalid_json(tmp_path: Path, reader, says, hint):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(MullamaError, match=r"config\.json is not valid JSON"):
        reader(tmp_path)
