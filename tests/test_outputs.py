"""The one rule for every command's outputs (issue 27, item 1): an output is never one of the command's inputs nor
inside (or around) an input store, and it is written whole or not at all."""

from __future__ import annotations


import pytest

from mullama.errors import MullamaError
from mullama.outputs import refuse_output_over_inputs
from mullama.serve.caption import run_caption
from mullama.serve.config import CaptionConfig, EditConfig, GenerateConfig
from mullama.serve.generate import check_out


def test_an_output_over_an_input_inside_a_store_or_around_one_is_refused(tmp_path):
    store = tmp_path / "store.zarr"
    (store / "partitions").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    clips = tmp_path / "ids.txt"
    clips.write_text("a\n")
    (tmp_path / "link.txt").symlink_to(clips)
    inputs = {"--store": str(store), "--clips": str(clips), "--unused": ""}
    refusals = [(clips, "is the --clips file"), (tmp_path / "link.txt", "is the --clips file"),
                (store, "is the --store folder"), (store / "zarr.json", "lies inside --store"),
                (store / "partitions" / "new.jsonl", "lies inside --store"), (tmp_path, "holds --store"),
                (tmp_path / "sub" / ".." / "ids.txt", "is the --clips file")]
    for out, message in refusals:
        with pytest.raises(MullamaError, match=message) as refused:
            refuse_output_over_inputs(out, inputs)
        assert len(str(refused.value).splitlines()) == 1 and str(out) in str(refused.value)
    refuse_output_over_inputs(tmp_path / "captions.jsonl", inputs)  # beside the inputs: fine
    refuse_output_over_inputs(tmp_path / "store.zarr.jsonl", inputs)  # a name sharing the store's prefix: fine


def test_caption_refuses_an_out_over_the_store_metadata_or_its_clip_list(tmp_path):
    store = tmp_path / "S"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3}')
    clips = tmp_path / "ids.txt"
    clips.write_text("c0.wav\n")
    common = {"store": str(store), "adapter": str(tmp_path / "adapter"), "llama": str(tmp_path / "llama"),
              "overwrite": True, "progress": False}
    for out, clip_list, message in ((store / "zarr.json", "", "lies inside --store"),
                                    (clips, str(clips), "is the --clips file")):
        with pytest.raises(MullamaError, match=message):
            run_caption(CaptionConfig(out=str(out), clips=clip_list, **common))
    assert (store / "zarr.json").read_text() == '{"zarr_format": 3}' and clips.read_text() == "c0.wav\n"


def test_generate_and_edit_refuse_an_out_that_is_their_input_or_inside_a_model_folder(tmp_path):
    recording = tmp_path / "in.wav"
    recording.write_bytes(b"RIFF")
    generator = tmp_path / "generator"
    generator.mkdir()
    edit = EditConfig(input=str(recording), request="violin", mert=str(tmp_path / "mert"), generator=str(generator),
                      out=str(recording), overwrite=True)
    with pytest.raises(MullamaError, match="is the INPUT file"):
        check_out(edit)
    made = GenerateConfig(request="piano", generator=str(generator), out=str(generator / "song.wav"))
    with pytest.raises(MullamaError, match="lies inside --generator"):
        check_out(made)
    assert recording.read_bytes() == b"RIFF"
