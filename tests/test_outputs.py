"""The one rule for every command's outputs (issue 27, item 1): an output is never one of the command's inputs nor
inside (or around) an input store, and it is written whole or not at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from mullama.config import build_config
from mullama.data.qagen.config import QaGenerateConfig, QaSplitConfig
from mullama.data.qagen.qa_pairs import write_qa_pairs
from mullama.data.qagen.split import run_qa_split
from mullama.errors import MullamaError
from mullama.knn.build import build_index
from mullama.knn.config import IndexBuildConfig
from mullama.model.importer import import_mu_llama
from mullama.store.config import ExportShardsConfig
from mullama.store.export import export_shards
from mullama.train.config import GeneratorTargetsConfig, GeneratorTrainConfig, TrainConfig
from mullama.train.generator import run_generator_training, run_targets
from mullama.train.trainer import check_run
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


def _inputs(root: Path) -> dict[str, Path]:
    """An input folder (a store, shards, a model) and an input file, as the commands below would read them."""
    folder, file = root / "input-folder", root / "input.json"
    folder.mkdir()
    (folder / "zarr.json").write_text("{}")
    file.write_text("[]")
    return {"folder": folder, "file": file}


# Each command, called with an --out over one of its inputs: (run, config class, {option: input}, output option).
COMMANDS: list[tuple[str, Callable[[Any], Any], type, dict[str, str]]] = [
    ("export-shards", export_shards, ExportShardsConfig, {"store": "folder", "qa": "file"}),
    ("train", lambda c: check_run(c, 1), TrainConfig, {"shards": "folder", "llama": "folder"}),
    ("generator targets", run_targets, GeneratorTargetsConfig, {"pairs": "file", "musicgen": "folder"}),
    ("generator train", run_generator_training, GeneratorTrainConfig,
     {"pairs": "file", "targets": "folder", "adapter": "folder", "llama": "folder"}),
    ("qa generate", write_qa_pairs, QaGenerateConfig, {"source": "file", "llm": "folder"}),
    ("qa split", run_qa_split, QaSplitConfig, {"qa": "folder"}),
    ("index build", build_index, IndexBuildConfig, {"store": "folder"}),
]


@pytest.mark.parametrize("name, run, config_class, given", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("where", ["is", "inside"])
def test_every_command_that_writes_refuses_an_out_over_its_inputs(tmp_path, name, run, config_class, given, where):
    inputs = _inputs(tmp_path)
    lists = {f for f, spec in config_class.__dataclass_fields__.items() if "list" in str(spec.type)}
    values: dict[str, Any] = {option: [str(inputs[kind])] if option in lists else str(inputs[kind])
                              for option, kind in given.items()}
    target = inputs["folder"] if where == "is" else inputs["folder"] / "out"
    with pytest.raises(MullamaError, match="--out .*(is the|lies inside)") as refused:
        run(build_config(config_class, {**values, "out": str(target), "progress": False}
                         if "progress" in config_class.__dataclass_fields__ else {**values, "out": str(target)}))
    assert "\n" not in str(refused.value)


def test_import_refuses_an_out_over_the_checkpoint_or_the_llama_folder(tmp_path):
    inputs = _inputs(tmp_path)
    for out in (inputs["file"], inputs["folder"] / "adapter"):
        with pytest.raises(MullamaError, match="--out .*(is the CHECKPOINT|lies inside --llama)"):
            import_mu_llama(inputs["file"], inputs["folder"], out)


def test_an_index_may_live_under_its_stores_indexes_folder_but_nowhere_else_in_it(tmp_path):
    store = _inputs(tmp_path)["folder"]
    with pytest.raises(MullamaError, match="lies inside STORE"):
        build_index(build_config(IndexBuildConfig, {"store": str(store), "out": str(store / "elsewhere")}))
    with pytest.raises(MullamaError) as opened:  # past the output check: the (fake) store itself is refused
        build_index(build_config(IndexBuildConfig, {"store": str(store), "out": str(store / "indexes" / "x")}))
    assert "--out" not in str(opened.value)


def test_urls_are_compared_with_urls_where_a_command_writes_to_them():
    inputs = {"--store": "s3://bucket/store/", "SOURCE": "S3A://bucket/qa/tags.jsonl", "--llama": "/models/llama"}
    for out, words in (("s3://bucket/store", "is the --store"), ("s3://bucket/store/c.jsonl", "lies inside --store"),
                       ("s3://bucket/qa", "holds SOURCE"), ("s3://bucket/qa/tags.jsonl/", "is the SOURCE")):
        with pytest.raises(MullamaError, match=f"^--out {out} {words}"):
            refuse_output_over_inputs(out, inputs, urls=True)
        refuse_output_over_inputs(out, inputs)  # commands that do not write to URLs leave them to the store
    for out in ("s3://bucket/store-captions.jsonl", "s3://other/store", "/models/llama-captions.jsonl"):
        refuse_output_over_inputs(out, inputs, urls=True)
