"""`mullama caption` and `mullama qa generate` reading from and writing to an S3 bucket (moto's server behind the
fault-injecting proxy of tests/s3_faults.py): the output equals the local-disk run's byte for byte; a run killed
mid-way continues from its committed parts, none redone, none twice; a third of the requests failing or held
past the read timeout changes nothing; a request failing every time is one line (exit 2) naming it and its key,
and the half-done run is finished by running the same command again. Outputs never land on an input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

import fsspec  # noqa: E402

from mullama.config import build_config  # noqa: E402
from mullama.data.qagen import qa_pairs  # noqa: E402
from mullama.data.qagen.config import QaGenerateConfig  # noqa: E402
from mullama.errors import MullamaError  # noqa: E402
from mullama.objectstore import ObjectFolder, ObjectStoreError  # noqa: E402
from mullama.serve import caption as caption_module  # noqa: E402
from mullama.serve.caption import run_caption  # noqa: E402
from mullama.serve.config import CaptionConfig  # noqa: E402
from tests.cluster import CREDENTIALS, REPO  # noqa: E402
from tests.helpers import synthetic_store  # noqa: E402
from tests.s3_faults import Fault  # noqa: E402
from tests.test_qagen import GOOD_DESCRIPTION, GOOD_OPEN  # noqa: E402
from tests.test_s3_faults import IMPATIENT, PATIENT, faulty_s3, s3_config, use  # noqa: E402

BUCKET = "s3://mullama-outputs"
STORE = f"{BUCKET}/store"
CLIPS = 10
# a third of the output's requests: 20 % answered 503 SlowDown, 10 % held past the 1 s read timeout
THIRD = {"slow_down": 0.2, "delayed": 0.1, "delay": 1.5}


@pytest.fixture(scope="module")
def proxy():
    """moto's server behind the fault proxy, a store of CLIPS clips in the bucket; this process talks to the
    proxy."""
    with faulty_s3(BUCKET) as faults:
        synthetic_store(STORE, clips=CLIPS, per_partition=CLIPS)
        yield faults


@pytest.fixture(autouse=True)
def no_faults(proxy):
    """Each test starts with every request forwarded, and mullama's own retry settings."""
    use(proxy, PATIENT)
    proxy.set(Fault())


def s3_bytes(url: str) -> bytes:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs.cat_file(url)


def s3_names(url: str) -> list[str]:
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return sorted(path.rsplit("/", 1)[-1] for path in fs.ls(url, detail=False)) if fs.exists(url) else []


def cli(*args: str, endpoint: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **CREDENTIALS, "PYTHONPATH": str(REPO), "FSSPEC_S3": json.dumps(s3_config(endpoint))}
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=300)


def one_error_line(run: subprocess.CompletedProcess) -> str:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    return lines[0]


# --------------------------------------------------------------------- captioning
@pytest.fixture(scope="module")
def adapter(proxy, tiny_llama, tmp_path_factory) -> Path:
    from mullama.model import MusicLlama
    from mullama.store import FeatureStore

    encoder = FeatureStore.open(STORE).encoder
    return MusicLlama.create(tiny_llama, encoder, device="cpu", seed=2).save(tmp_path_factory.mktemp("s3out") / "a")


def caption_config(adapter: Path, llama: Path, out: str, **options) -> CaptionConfig:
    return build_config(CaptionConfig, {"store": STORE, "adapter": str(adapter), "llama": str(llama), "out": out,
                                        "max_new_tokens": 4, "batch_size": 2, "partition_size": 2, "device": "cpu",
                                        "progress": False, **options})


@pytest.fixture(scope="module")
def local_captions(adapter, tiny_llama, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("local-captions") / "captions.jsonl"
    assert run_caption(caption_config(adapter, tiny_llama, str(out))).captioned_now == CLIPS
    return out.read_bytes()


def test_captions_written_to_s3_equal_the_local_file_byte_for_byte(adapter, tiny_llama, local_captions):
    out = f"{BUCKET}/captions/plain.jsonl"
    report = run_caption(caption_config(adapter, tiny_llama, out))
    assert report.exit_code == 0 and report.captioned_now == CLIPS
    assert s3_bytes(out) == local_captions
    assert s3_names(f"{out}.parts") == ["plan.json"], "the parts are removed, the completed plan stays"
    again = run_caption(caption_config(adapter, tiny_llama, out))
    assert again.captioned_now == 0 and "already complete" in again.note


def test_a_caption_run_killed_mid_way_continues_from_its_parts_in_s3(adapter, tiny_llama, local_captions,
                                                                    monkeypatch):
    out = f"{BUCKET}/captions/killed.jsonl"
    real, calls, killed = caption_module.caption_partition, [], []

    def killed_on_the_third(*args, **kwargs):
        calls.append(args[3])  # the partition's number
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise KeyboardInterrupt  # the driver dies between partitions
        return real(*args, **kwargs)

    monkeypatch.setattr(caption_module, "caption_partition", killed_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_caption(caption_config(adapter, tiny_llama, out))
    assert s3_names(f"{out}.parts") == ["part-00000.jsonl", "part-00001.jsonl", "plan.json"]
    assert not fsspec.filesystem("s3").exists(out)
    calls.clear()
    report = run_caption(caption_config(adapter, tiny_llama, out))
    assert sorted(calls) == [2, 3, 4], "committed partitions are not captioned again"
    assert (report.resumed, report.captioned_now) == (4, CLIPS - 4)
    assert s3_bytes(out) == local_captions, "each clip once, in order, the same captions"


def test_captions_through_a_third_of_requests_failing_are_the_same(proxy, adapter, tiny_llama, local_captions):
    out = f"{BUCKET}/captions/faulty.jsonl"
    proxy.set(Fault(**THIRD, key=r"/captions/faulty", seed=5))
    report = run_caption(caption_config(adapter, tiny_llama, out))
    faults = sum(n for name, n in proxy.counts.items() if not name.startswith("forward"))
    proxy.set(Fault())
    assert report.exit_code == 0 and s3_bytes(out) == local_captions
    assert faults >= 3, proxy.counts


def test_a_part_put_failing_every_time_is_one_line_and_the_rerun_finishes(proxy, adapter, tiny_llama,
                                                                         local_captions):
    out = f"{BUCKET}/captions/refused.jsonl"
    use(proxy, IMPATIENT)
    proxy.set(Fault(slow_down=1.0, method="PUT", key=r"/captions/refused\.jsonl\.parts/part-"))
    with pytest.raises(ObjectStoreError) as failure:
        run_caption(caption_config(adapter, tiny_llama, out))
    message = str(failure.value)
    assert message.startswith(f"object store request failed after retries: PUT {out}.parts/part-00000.jsonl: ")
    assert "\n" not in message and "run the same command again" in message
    proxy.set(Fault())
    assert s3_names(f"{out}.parts") == ["plan.json"], "nothing half-written is taken for a part"
    assert run_caption(caption_config(adapter, tiny_llama, out)).captioned_now == CLIPS
    assert s3_bytes(out) == local_captions


def test_caption_outputs_on_inputs_or_in_missing_buckets_are_refused_before_any_work(adapter, tiny_llama):
    for out, words in ((STORE, "is the --store"), (f"{STORE}/captions.jsonl", "lies inside --store"),
                       ("s3://another-bucket/", "names no file"),
                       ("s3://no-such-bucket/c.jsonl", "bucket does not exist")):
        with pytest.raises(MullamaError, match=words):
            run_caption(caption_config(adapter, tiny_llama, out))
    with pytest.raises(MullamaError, match="--index adds the captions .* from a local file"):
        run_caption(caption_config(adapter, tiny_llama, f"{BUCKET}/captions/indexed.jsonl", index="words"))


def test_a_clip_list_in_s3_and_overwrite_of_an_s3_output(adapter, tiny_llama, local_captions):
    out, clips = f"{BUCKET}/captions/listed.jsonl", f"{BUCKET}/captions-input/ids.txt"
    fsspec.filesystem("s3").pipe_file(clips, b"clip00003\nclip00001\n")
    report = run_caption(caption_config(adapter, tiny_llama, out, clips=clips))
    assert report.captioned_now == 2 and [json.loads(line)["clip_id"] for line in s3_bytes(out).splitlines()] == [
        "clip00003", "clip00001"]
    with pytest.raises(MullamaError, match="other settings or clips"):
        run_caption(caption_config(adapter, tiny_llama, out))
    assert run_caption(caption_config(adapter, tiny_llama, out, overwrite=True)).captioned_now == CLIPS
    assert s3_bytes(out) == local_captions and s3_names(f"{out}.parts") == ["plan.json"]


# --------------------------------------------------------------------- QA generation
QA_CLIPS = 9


class SeededLLM:
    """A stand-in LLM: answers that parse, except for every third clip's description, which never does."""

    name = "seeded"

    def __init__(self, killed_at: int = QA_CLIPS):
        self.killed_at, self.clips = killed_at, []

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str]:
        outputs = []
        for prompt in prompts:
            number = next(n for n in range(QA_CLIPS) if f"tag{n}," in prompt or f"tag{n}." in prompt)
            if number >= self.killed_at:
                raise KeyboardInterrupt  # the driver dies before this clip's batch is committed
            self.clips.append(number)
            description = "four questions" in prompt
            outputs.append(("no numbers" if number % 3 == 0 else GOOD_DESCRIPTION) if description else GOOD_OPEN)
        return outputs


@pytest.fixture(scope="module")
def qa_source(proxy) -> str:
    """The tags source, in the bucket."""
    url = f"{BUCKET}/qa-input/tags.jsonl"
    fsspec.filesystem("s3").pipe_file(url, "".join(json.dumps({"clip_id": f"clip{n}.mp3", "tags": [
        "piano", "calm", f"tag{n}"]}) + "\n" for n in range(QA_CLIPS)).encode())
    return url


def generate(source: str, out: str, llm: SeededLLM, **options) -> qa_pairs.QaPairsReport:
    config = build_config(QaGenerateConfig, {"source": source, "out": out, "llm": "seeded", "progress": False,
                                             "max_attempts": 2, "batch_size": 2, **options})
    return qa_pairs.write_qa_pairs(config, make_backend=lambda _: llm)


@pytest.fixture(scope="module")
def local_qa(qa_source, tmp_path_factory) -> dict[str, bytes]:
    local_source = tmp_path_factory.mktemp("qa-source") / "tags.jsonl"
    local_source.write_bytes(s3_bytes(qa_source))
    out = tmp_path_factory.mktemp("local-qa")
    report = generate(str(local_source), str(out), SeededLLM())
    assert (report.generated, len(report.failed)) == (6, 3)
    return {name: (out / name).read_bytes() for name in ("qa.jsonl", "failures.jsonl")}


def qa_outputs(out: str) -> dict[str, bytes]:
    return {name: s3_bytes(f"{out}/{name}") for name in ("qa.jsonl", "failures.jsonl")}


def test_qa_pairs_from_and_to_s3_equal_the_local_files_byte_for_byte(qa_source, local_qa):
    out = f"{BUCKET}/qa/plain"
    report = generate(qa_source, out, SeededLLM())
    assert (report.generated, len(report.failed), report.exit_code) == (6, 3, 1)
    assert qa_outputs(out) == local_qa
    assert s3_names(out) == ["failures.jsonl", "qa.jsonl", "settings.json"], "the parts are gone"
    llm = SeededLLM()
    assert generate(qa_source, out, llm).generated == 0 and not llm.clips, "a finished run asks for nothing"
    assert qa_outputs(out) == local_qa


def test_a_qa_run_killed_mid_way_continues_from_its_committed_batches(qa_source, local_qa):
    out = f"{BUCKET}/qa/killed"
    with pytest.raises(KeyboardInterrupt):
        generate(qa_source, out, SeededLLM(killed_at=4))  # two batches of two clips committed
    committed = s3_names(f"{out}/qa.jsonl.parts") + s3_names(f"{out}/failures.jsonl.parts")
    assert len(committed) == 4 and not fsspec.filesystem("s3").exists(f"{out}/qa.jsonl"), committed
    llm = SeededLLM()
    report = generate(qa_source, out, llm)
    assert sorted(set(llm.clips)) == [4, 5, 6, 7, 8], "the committed clips are not asked again"
    assert (report.resumed, report.generated, len(report.failed)) == (2, 4, 1)
    assert qa_outputs(out) == local_qa, "each clip once, in the source's order"


def test_qa_pairs_through_a_third_of_requests_failing_are_the_same(proxy, qa_source, local_qa):
    out = f"{BUCKET}/qa/faulty"
    proxy.set(Fault(**THIRD, key=r"/qa/faulty|/qa-input/", seed=11))
    report = generate(qa_source, out, SeededLLM())
    faults = sum(n for name, n in proxy.counts.items() if not name.startswith("forward"))
    proxy.set(Fault())
    assert report.generated == 6 and qa_outputs(out) == local_qa
    assert faults >= 3, proxy.counts


def test_the_cli_says_in_one_line_which_qa_request_failed_and_the_rerun_finishes(proxy, qa_source):
    """Templates (no model): every PUT of a committed batch refused, exit 2 naming it; then a clean rerun."""
    out = f"{BUCKET}/qa/refused"
    proxy.set(Fault(slow_down=1.0, method="PUT", key=r"/qa/refused/qa\.jsonl\.parts/"))
    line = one_error_line(cli("qa", "generate", qa_source, "--out", out, "--llm", "template",
                              endpoint=proxy.endpoint))
    proxy.set(Fault())
    assert line.startswith(f"error: object store request failed after retries: PUT {out}/qa.jsonl.parts/part-"), line
    assert s3_names(f"{out}/qa.jsonl.parts") == []
    run = cli("qa", "generate", qa_source, "--out", out, "--llm", "template", endpoint=proxy.endpoint)
    assert run.returncode == 0, run.stderr
    assert len(s3_bytes(f"{out}/qa.jsonl").splitlines()) == QA_CLIPS


def test_qa_outputs_on_the_source_or_in_missing_buckets_are_refused(proxy, qa_source):
    for out, words in ((f"{BUCKET}/qa-input", "holds SOURCE"), (qa_source, "is the SOURCE")):
        with pytest.raises(MullamaError, match=words):
            generate(qa_source, out, SeededLLM())
    with pytest.raises(MullamaError, match=f"source {BUCKET}/qa-input/absent.jsonl does not exist"):
        generate(f"{BUCKET}/qa-input/absent.jsonl", f"{BUCKET}/qa/x", SeededLLM())
    line = one_error_line(cli("qa", "generate", qa_source, "--out", "s3://no-such-bucket/qa", "--llm", "template",
                              endpoint=proxy.endpoint))
    assert line == ("error: --out s3://no-such-bucket/qa: cannot write there (its bucket does not exist); create it "
                    "or choose another"), line


def test_the_demo_corpus_folder_in_s3_is_a_source_and_its_audio_paths_stay_in_the_bucket():
    folder = f"{BUCKET}/qa-demo"
    fsspec.filesystem("s3").pipe_file(f"{folder}/manifest.csv", b"clip_id,path,instrument,style,tempo_bpm\n"
                                      b"d0.wav,audio/d0.wav,piano,baroque,70\n"
                                      b"d1.wav,s3://elsewhere/d1.wav,violin,jazz,130\n")
    report = qa_pairs.write_qa_pairs(build_config(QaGenerateConfig, {"source": folder, "out": f"{BUCKET}/qa/demo",
                                                                     "llm": "template", "progress": False}))
    rows = [json.loads(line) for line in s3_bytes(f"{BUCKET}/qa/demo/qa.jsonl").splitlines()]
    assert report.generated == 2 and [row["source"]["path"] for row in rows] == [
        f"{folder}/audio/d0.wav", "s3://elsewhere/d1.wav"]


def test_two_runs_at_once_on_a_bucket_lose_neither_ones_rows():
    """A bucket has no lock: run A finishes while run B, started before, still commits; B's file keeps A's."""
    folder = ObjectFolder(f"{BUCKET}/qa/together")
    first, second = qa_pairs.ClipLines(folder, "qa.jsonl"), qa_pairs.ClipLines(folder, "qa.jsonl")
    first.append([{"clip_id": "a1"}])
    second.append([{"clip_id": "b1"}])
    first.append([{"clip_id": "a2"}])
    first.finish(["a1", "a2", "b1", "b2"])
    second.append([{"clip_id": "b2"}])
    second.finish(["a1", "a2", "b1", "b2"])
    assert [json.loads(line)["clip_id"] for line in s3_bytes(f"{BUCKET}/qa/together/qa.jsonl").splitlines()] == [
        "a1", "a2", "b1", "b2"]
    assert s3_names(f"{BUCKET}/qa/together/qa.jsonl.parts") == []
