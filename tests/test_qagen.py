"""`mullama qa`: MusicQA-style pairs from captions and tags. A scripted fake LLM (exact parsing, retries,
failures, resume), a tiny random LLM through the real transformers path, a fake OpenAI-compatible server over
HTTP, MusicCaps and MagnaTagATune-style sources, and templates -> split -> extract -> shards -> train."""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mullama.config import build_config
from mullama.data.qagen.config import QaGenerateConfig, QaSplitConfig
from mullama.data.qagen.qa_pairs import write_qa_pairs
from mullama.data.qagen.instructions import DESCRIPTION_QUESTIONS, parse_description, parse_open
from mullama.data.qagen.sources import read_source
from mullama.data.qagen.split import run_qa_split
from mullama.errors import MullamaError
from tests.helpers import write_tone

GOOD_DESCRIPTION = ("1. A calm piano piece.\n2. Describe the audio in detail: A calm solo piano plays slow chords,\n"
                    "with soft dynamics.\n3) I hear a piano.\n4. It could accompany a quiet evening.")
GOOD_OPEN = "\n".join(f"{n}. What is true of the {topic} here?\nAnswer: The {topic} is plain and clear."
                      for n, topic in enumerate(["tempo", "mood", "instruments", "genre", "setting"], start=1))


def test_parsing_reads_numbered_answers_and_question_answer_pairs():
    assert parse_description(GOOD_DESCRIPTION) == [
        (DESCRIPTION_QUESTIONS[0], "A calm piano piece."),
        (DESCRIPTION_QUESTIONS[1], "A calm solo piano plays slow chords, with soft dynamics."),
        (DESCRIPTION_QUESTIONS[2], "I hear a piano."),
        (DESCRIPTION_QUESTIONS[3], "It could accompany a quiet evening.")]
    pairs = parse_open(GOOD_OPEN.replace("Answer:", "answer -", 1).replace("\nAnswer: The mood", " Answer: The mood"))
    assert pairs[0] == ("What is true of the tempo here?", "The tempo is plain and clear.")
    assert pairs[1] == ("What is true of the mood here?", "The mood is plain and clear.")
    assert len(pairs) == 5


def tags_source(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"clip_id": f"clip{n}.mp3", "tags": ["piano", "calm", f"tag{n}"]}) + "\n"
                            for n in range(count)))
    return path


class ScriptedLLM:
    """Answers by clip: `plans[clip][request]` is a list of outputs, one per attempt (the last repeats)."""

    name = "scripted"

    def __init__(self, plans: dict[str, dict[str, list[str]]]):
        self.plans = plans
        self.calls: list[tuple[str, str, float, int]] = []

    def complete(self, prompts: list[str], temperature: float, seed: int) -> list[str]:
        outputs = []
        for prompt in prompts:
            clip = next(c for c in self.plans if f"tag{c[4:-4]}." in prompt or f"tag{c[4:-4]}," in prompt)
            request = "description" if "four questions" in prompt else "open"
            attempt = sum(1 for c, r, _, _ in self.calls if (c, r) == (clip, request))
            self.calls.append((clip, request, temperature, seed))
            plan = self.plans[clip][request]
            outputs.append(plan[min(attempt, len(plan) - 1)])
        return outputs


def generate(source: Path, out: Path, llm: ScriptedLLM | None = None, **options):
    config = build_config(QaGenerateConfig, {"source": str(source), "out": str(out), "llm": "scripted",
                                             "progress": False, "max_attempts": 3, "batch_size": 2, **options})
    return write_qa_pairs(config, make_backend=(lambda _: llm) if llm else None)


def test_scripted_llm_retries_records_failures_and_resumes(tmp_path):
    source = tags_source(tmp_path / "tags.jsonl", 4)
    good = {"description": [GOOD_DESCRIPTION], "open": [GOOD_OPEN]}
    plans = {"clip0.mp3": good,
             "clip1.mp3": {"description": ["1. Only one answer.", "1. A.\n2. B.", GOOD_DESCRIPTION],
                           "open": [GOOD_OPEN]},
             "clip2.mp3": {"description": [GOOD_DESCRIPTION], "open": ["no numbered pairs at all"]},
             "clip3.mp3": {"description": ["1. Number your answers 1 to 4 and write nothing else.\n2. x y\n3. x y\n"
                                           "4. x y"], "open": [GOOD_OPEN]}}
    llm = ScriptedLLM(plans)
    report = generate(source, tmp_path / "out", llm, limit=2)
    assert report.exit_code == 0 and report.generated == 2
    rows = {json.loads(line)["clip_id"]: json.loads(line)
            for line in (tmp_path / "out/qa.jsonl").read_text().splitlines()}
    assert rows["clip1.mp3"]["attempts"] == {"description": 3, "open": 1}
    assert rows["clip0.mp3"]["description"][1] == {"question": "Describe the audio in detail",
                                                   "answer": "A calm solo piano plays slow chords, with soft dynamics."}
    assert {t for _, r, t, _ in llm.calls if r == "description"} == {0.5}
    assert {t for _, r, t, _ in llm.calls if r == "open"} == {0.4}

    # A killed run's torn line is dropped; the resumed run asks only for the clips not done.
    with open(tmp_path / "out/qa.jsonl", "a") as handle:
        handle.write('{"clip_id": "clip2.mp3", "descr')
    llm.calls.clear()
    report = generate(source, tmp_path / "out", llm)
    assert (report.resumed, report.generated, len(report.failed), report.exit_code) == (2, 0, 2, 1)
    assert {c for c, _, _, _ in llm.calls} == {"clip2.mp3", "clip3.mp3"}
    lines = (tmp_path / "out/qa.jsonl").read_text().splitlines()
    assert [json.loads(line)["clip_id"] for line in lines] == ["clip0.mp3", "clip1.mp3"]  # whole lines, once each
    failures = {json.loads(line)["clip_id"]: json.loads(line) for line in
                (tmp_path / "out/failures.jsonl").read_text().splitlines()}
    assert failures["clip2.mp3"]["reason"] == "open: parsed 0 of 5 items (after 3 attempts)"
    assert failures["clip3.mp3"]["reason"] == "description: item 1 repeats the instructions (after 3 attempts)"

    # Failed clips stay failed on a rerun, unless asked again; then they leave the failure log.
    llm.calls.clear()
    assert generate(source, tmp_path / "out", llm).generated == 0 and not llm.calls
    plans["clip2.mp3"]["open"] = [GOOD_OPEN]
    report = generate(source, tmp_path / "out", llm, retry_failed=True)
    assert report.generated == 1 and [f["clip_id"] for f in report.failed] == ["clip3.mp3"]
    assert [json.loads(line)["clip_id"] for line in (tmp_path / "out/failures.jsonl").read_text().splitlines()] == [
        "clip3.mp3"]
    with pytest.raises(MullamaError, match="other settings"):
        generate(source, tmp_path / "out", llm, seed=7)


MUSICCAPS_HEADER = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption", "author_id",
                    "is_balanced_subset", "is_audioset_eval"]


def test_musiccaps_and_magnatagatune_sources_parse(tmp_path):
    with open(tmp_path / "musiccaps-public.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MUSICCAPS_HEADER)
        writer.writerow(["-0Gj8-vB1q4", "30", "40", "/m/0140xf,/m/02cjck,/m/04rlf",
                         "['low quality', 'sustained strings melody', \"player's soft touch\", 'lo-fi']",
                         'The low quality recording features a "sustained" strings melody, soft, and a tape hiss.',
                         "9", "False", "True"])
        writer.writerow(["-0SdAVK79lg", "30", "40", "/m/0155w", "['guitar', 'no vocals']", "", "4", "False", "False"])
    first, second = read_source(tmp_path / "musiccaps-public.csv")
    assert (first.clip_id, first.kind, first.origin) == ("-0Gj8-vB1q4.wav", "caption",
                                                         {"ytid": "-0Gj8-vB1q4", "start_s": 30.0, "end_s": 40.0})
    assert first.tags == ["low quality", "sustained strings melody", "player's soft touch", "lo-fi"]
    assert first.text.startswith('The low quality recording features a "sustained"')
    assert (second.kind, second.text) == ("tags", "guitar, no vocals")  # no caption: its aspects
    (tmp_path / "annotations_final.csv").write_text(
        "clip_id\tno voice\tsinger\tguitar\tmp3_path\n2\t0\t1\t1\tf/track-01.mp3\n6\t1\t0\t0\t0/other-02.mp3\n")
    tagged = read_source(tmp_path / "annotations_final.csv")
    assert [(c.clip_id, c.tags, c.origin["path"]) for c in tagged] == [("2", ["singer", "guitar"], "f/track-01.mp3"),
                                                                       ("6", ["no voice"], "0/other-02.mp3")]
    (tmp_path / "dup.jsonl").write_text('{"clip_id": "a", "tags": "x"}\n{"clip_id": "a", "tags": "y"}\n')
    with pytest.raises(MullamaError, match="more than once"):
        read_source(tmp_path / "dup.jsonl")


class FakeEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering well, slowly enough that concurrency shows."""

    seen: list[dict] = []
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send({"object": "list", "data": [{"id": "fake-7b", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with FakeEndpoint.lock:
            FakeEndpoint.seen.append(request)
            FakeEndpoint.in_flight += 1
            FakeEndpoint.most_in_flight = max(FakeEndpoint.most_in_flight, FakeEndpoint.in_flight)
        time.sleep(0.05)
        with FakeEndpoint.lock:
            FakeEndpoint.in_flight -= 1
        text = GOOD_DESCRIPTION if "four questions" in request["messages"][0]["content"] else GOOD_OPEN
        self._send({"id": "c", "object": "chat.completion", "created": 0, "model": request["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


def test_an_openai_compatible_endpoint_over_http(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = tags_source(tmp_path / "tags.jsonl", 6)
        config = build_config(QaGenerateConfig, {"source": str(source), "out": str(tmp_path / "out"),
                                                 "llm": f"http://127.0.0.1:{server.server_port}/v1", "batch_size": 6,
                                                 "concurrency": 4, "progress": False})
        report = write_qa_pairs(config)
    finally:
        server.shutdown()
    assert report.exit_code == 0 and report.generated == 6
    assert {r["model"] for r in FakeEndpoint.seen} == {"fake-7b"}  # the model the endpoint lists
    assert sorted({r["temperature"] for r in FakeEndpoint.seen}) == [0.4, 0.5]
    assert FakeEndpoint.most_in_flight >= 2 and len(FakeEndpoint.seen) == 12
    assert json.loads((tmp_path / "out/settings.json").read_text())["generator"] == "fake-7b"


def test_a_tiny_random_llm_through_transformers(tmp_path, tiny_llama):
    import shutil

    from mullama.data.qagen.backends import LocalBackend

    source = tags_source(tmp_path / "tags.jsonl", 3)
    config = build_config(QaGenerateConfig, {"source": str(source), "out": str(tmp_path / "out"),
                                             "llm": str(tiny_llama), "max_attempts": 2, "max_new_tokens": 6,
                                             "batch_size": 3, "device": "cpu", "progress": False})
    report = write_qa_pairs(config)  # random weights write no numbered answers: every clip fails, and says why
    assert report.exit_code == 1 and len(report.failed) == 3
    assert all(f["reason"].startswith("description: parsed") for f in report.failed)
    chat = tmp_path / "chat-llm"
    shutil.copytree(tiny_llama, chat)
    settings = json.loads((chat / "tokenizer_config.json").read_text())
    settings["chat_template"] = "{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}<|assistant|>"
    (chat / "tokenizer_config.json").write_text(json.dumps(settings))
    backend = LocalBackend(str(chat), 4, device="cpu")
    assert backend.format("Hi") == "<|user|>Hi<|end|><|assistant|>"
    assert len(backend.complete(["Hi", "A longer prompt here"], 0.5, 0)) == 2


def demo_like_corpus(root: Path, count: int) -> Path:
    rows = []
    for n in range(count):
        write_tone(root / "audio" / f"d{n}.wav", 1.0, 24000, 150.0 * (n + 1), seed=n)
        rows.append({"clip_id": f"d{n}.wav", "path": f"audio/d{n}.wav", "instrument": ["piano", "violin"][n % 2],
                     "style": "Baroque chorale", "tempo_bpm": str(60 + 30 * n), "key": "A minor", "meter": "4/4",
                     "composer": "Johann Sebastian Bach", "title": f"piece {n}"})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_templates_split_and_feed_extraction_shards_and_training(tmp_path, tiny_mert, tiny_llama):
    from mullama.data.musicqa import read_musicqa
    from mullama.extract.config import ExtractConfig
    from mullama.extract.runner import run_local
    from mullama.store.config import ExportShardsConfig
    from mullama.store.export import export_shards
    from mullama.train.config import TrainConfig
    from mullama.train.trainer import run_training

    corpus = demo_like_corpus(tmp_path / "corpus", 6)
    report = write_qa_pairs(build_config(QaGenerateConfig, {"source": str(corpus), "out": str(tmp_path / "qa"),
                                                             "llm": "template", "progress": False}))
    assert report.generated == 6 and report.exit_code == 0
    row = json.loads((tmp_path / "qa/qa.jsonl").read_text().splitlines()[1])
    assert row["open"][0] == {"question": "What is the tempo of this music?", "answer": "The tempo is moderate."}
    assert row["open"][2]["answer"] == "Violin."
    split = build_config(QaSplitConfig, {"qa": str(tmp_path / "qa"), "out": str(tmp_path / "musicqa"),
                                         "eval_fraction": 0.34, "seed": 3})
    assert run_qa_split(split).clips == {"train": 4, "eval": 2}
    files = {name: read_musicqa(tmp_path / "musicqa" / f"MusicQA_{name}.json")
             for name in ("pretrain", "finetune", "eval")}
    train_clips = {p.audio_name for p in files["pretrain"]} | {p.audio_name for p in files["finetune"]}
    assert not train_clips & {p.audio_name for p in files["eval"]} and len(files["eval"]) == 2 * 9
    assert (len(files["pretrain"]), len(files["finetune"])) == (4 * 4, 4 * 5)
    with pytest.raises(MullamaError, match="already holds"):
        run_qa_split(split)
    assert run_qa_split(build_config(QaSplitConfig, {**vars(split), "overwrite": True})).counts == {
        "pretrain": 16, "finetune": 20, "eval": 18}  # the same split again: it depends only on ids and seed
    mapping = list(csv.DictReader(open(tmp_path / "musicqa/mapping.csv")))
    assert {m["audio_name"] for m in mapping} == {f"d{n}.wav" for n in range(6)}
    assert all(Path(m["path"]).is_file() for m in mapping)

    run_local(ExtractConfig(input=str(tmp_path / "musicqa/manifest.csv"), mert=str(tiny_mert),
                            store=str(tmp_path / "store"), workers=0, progress=False))
    export_shards(ExportShardsConfig(store=str(tmp_path / "store"), out=str(tmp_path / "shards"),
                                     qa=[str(tmp_path / "musicqa/MusicQA_pretrain.json")], progress=False))
    result = run_training(TrainConfig(shards=str(tmp_path / "shards"), llama=str(tiny_llama),
                                      out=str(tmp_path / "run"), max_steps=2, batch_size=4, workers=0,
                                      progress=False, log_every=1, save_every=2, max_length=64, device="cpu"))
    assert (tmp_path / "run" / "adapter" / "adapter.json").is_file() and result is not None


class MisbehavingEndpoint(BaseHTTPRequestHandler):
    """An endpoint answering every request with `reply` = (status, content type, body); a None status drops the
    connection without an answer. 5xx and 429 say x-should-retry: false, so the client does not wait between."""

    reply: tuple[int | None, str, bytes] = (200, "application/json", b"{}")

    def log_message(self, *args) -> None:
        pass

    def _answer(self) -> None:
        status, content_type, body = MisbehavingEndpoint.reply
        if status is None:
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-should-retry", "false")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer()


@pytest.fixture
def misbehaving_endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), MisbehavingEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


NOT_A_COMPLETION = "the endpoint's reply is not a chat completion"


@pytest.mark.parametrize("reply, cause", [
    ((200, "application/json", b"{not json"), NOT_A_COMPLETION),
    ((200, "application/json", b"{}"), NOT_A_COMPLETION),
    ((200, "application/json", b'{"choices": []}'), NOT_A_COMPLETION),
    ((200, "application/json", b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": {"a": 1}}}]}'),
     NOT_A_COMPLETION),
    ((200, "text/html", b"<html><body>Bad gateway</body></html>"), NOT_A_COMPLETION),
    ((500, "application/json", b'{"error": {"message": "out of memory"}}'), "the endpoint failed: Error code: 500"),
    ((429, "application/json", b'{"error": {"message": "slow down"}}'), "the endpoint failed: Error code: 429"),
    ((None, "", b""), "the endpoint failed: Connection error"),
], ids=["invalid-json", "empty-object", "no-choices", "non-string-content", "html", "500", "429", "dropped"])
def test_an_endpoint_reply_that_is_no_completion_fails_the_clip_with_its_cause(tmp_path, misbehaving_endpoint,
                                                                              reply, cause):
    MisbehavingEndpoint.reply = reply
    config = build_config(QaGenerateConfig, {"source": str(tags_source(tmp_path / "tags.jsonl", 2)),
                                             "out": str(tmp_path / "out"), "llm": misbehaving_endpoint,
                                             "llm_model": "fake-7b", "max_attempts": 2, "progress": False})
    report = write_qa_pairs(config)  # the run goes on: both clips recorded as failed, none generated
    assert (report.exit_code, report.generated, len(report.failed)) == (1, 0, 2)
    failures = [json.loads(line) for line in (tmp_path / "out/failures.jsonl").read_text().splitlines()]
    assert [f["clip_id"] for f in failures] == ["clip0.mp3", "clip1.mp3"]
    for failure in failures:
        assert failure["reason"].startswith(f"description: {cause}") and "(after 2 attempts)" in failure["reason"]


@pytest.mark.parametrize("body", [b"{not json", b"<html>Bad gateway</html>", b'{"data": [{"object": "model"}]}'])
def test_an_endpoint_whose_model_list_is_no_list_is_one_line(tmp_path, misbehaving_endpoint, body):
    MisbehavingEndpoint.reply = (200, "text/html" if body.startswith(b"<") else "application/json", body)
    config = build_config(QaGenerateConfig, {"source": str(tags_source(tmp_path / "tags.jsonl", 1)),
                                             "out": str(tmp_path / "out"), "llm": misbehaving_endpoint,
                                             "progress": False})
    with pytest.raises(MullamaError, match="did not answer its model list") as error:
        write_qa_pairs(config)
    assert "\n" not in str(error.value)


def test_llm_folders_needing_their_own_code_or_not_causal_lms_are_refused_before_loading(tmp_path, tiny_llama):
    import shutil

    from mullama.data.qagen.backends import LocalBackend
    from mullama.fixtures.musicgen import musicgen_config

    marker = tmp_path / "the folder's code ran"
    code = f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig as EvilConfig\n" \
           "from transformers import LlamaForCausalLM as EvilLM\n"

    def folder(name: str, file: str, change: dict) -> Path:
        path = tmp_path / name
        shutil.copytree(tiny_llama, path)
        (path / "evil.py").write_text(code)
        settings = json.loads((path / file).read_text())
        (path / file).write_text(json.dumps({**settings, **change}))
        return path

    remote = {"auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilLM",
                           "AutoTokenizer": ["evil.EvilTokenizer", None]}}
    cases = {folder("remote-model", "config.json", remote): "auto_map",
             folder("remote-unknown", "config.json", {**remote, "model_type": "evil_lm"}): "auto_map",
             folder("remote-tokenizer", "tokenizer_config.json", remote): "auto_map",
             folder("unknown-type", "config.json", {"model_type": "evil_lm"}): "model type 'evil_lm'"}
    musicgen = tmp_path / "musicgen"
    musicgen_config("tiny").save_pretrained(musicgen)
    cases[musicgen] = "not a causal language model"
    for path, cause in cases.items():
        with pytest.raises(MullamaError, match=cause) as error:
            LocalBackend(str(path), 4, device="cpu")
        assert "\n" not in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()


def write_qa_rows(path: Path, ids: list[str], source: dict | None = None) -> Path:
    pair = {"question": "What is it?", "answer": "A calm piano piece."}
    path.mkdir(parents=True, exist_ok=True)
    (path / "qa.jsonl").write_text("".join(json.dumps({"clip_id": clip_id, "kind": "tags", "source": source or {},
                                                       "description": [pair] * 4, "open": [pair] * 5}) + "\n"
                                           for clip_id in ids))
    return path


def test_split_skips_ids_that_would_leave_the_audio_root_and_repeated_ids(tmp_path):
    escaping = ["a/../../etc", "/etc/passwd", "C:\\Windows\\x.wav", "c:x.wav", "sub\\..\\..\\x.wav", "nul\x00.wav",
                "..", ""]
    ids = ["ok0.wav", "ok1.wav", "sub/ok2.wav", "ok3.wav", *escaping, "ok1.wav", "ok3.wav"]
    qa = write_qa_rows(tmp_path / "qa", ids)
    root = tmp_path / "audio"
    report = run_qa_split(build_config(QaSplitConfig, {"qa": str(qa), "out": str(tmp_path / "split"),
                                                       "audio_root": str(root), "eval_fraction": 0.25}))
    assert report.exit_code == 1 and report.clips == {"train": 3, "eval": 1}
    skipped = dict(report.skipped)
    assert set(skipped) == {*escaping, "ok1.wav", "ok3.wav"}
    assert skipped["ok1.wav"] == "repeats row 2 (the first is kept)"
    assert all(skipped[name] == f"names no file below --audio-root {root}" for name in escaping)
    assert report.counts == {"pretrain": 3 * 4, "finetune": 3 * 5, "eval": 9}
    manifest = list(csv.DictReader(open(tmp_path / "split/manifest.csv")))
    mapping = list(csv.DictReader(open(tmp_path / "split/mapping.csv")))
    assert sorted(m["clip_id"] for m in manifest) == ["ok0.wav", "ok1.wav", "ok3.wav", "sub/ok2.wav"]
    assert len(mapping) == 4
    assert all(Path(m["path"]).resolve().is_relative_to(root.resolve()) for m in manifest)
    assert any("skipped" in line and "a/../../etc" in line for line in report.lines())

    # Without --audio-root the id itself is the manifest path, relative to the manifest: the same rule holds.
    report = run_qa_split(build_config(QaSplitConfig, {"qa": str(write_qa_rows(tmp_path / "qa2", ids[:5])),
                                                       "out": str(tmp_path / "split2"), "eval_fraction": 0.25}))
    assert [name for name, _ in report.skipped] == ["a/../../etc"]
    # A path the source gave is the user's own and is kept as given.
    report = run_qa_split(build_config(QaSplitConfig, {
        "qa": str(write_qa_rows(tmp_path / "qa3", ["x.wav", "y.wav"], {"path": "/data/music/x.wav"})),
        "out": str(tmp_path / "split3"), "eval_fraction": 0.5}))
    assert report.exit_code == 0 and not report.skipped


def strict_json(line: str) -> dict:
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=refuse)


def test_generate_records_a_clip_with_bad_cells_and_goes_on(tmp_path):
    long_caption = "a calm piano " * 11_000  # 143,000 characters: over the csv module's field limit
    rows = [["good", "30", "40", "['piano', 'calm']", "A calm piano piece."],
            ["nan-start", "nan", "40", "['piano']", "Piano."],
            ["inf-end", "30", "inf", "['piano']", "Piano."],
            ["negative", "-5", "5", "['piano']", "Piano."],
            ["reversed", "40", "30", "['piano']", "Piano."],
            ["words", "thirty", "40", "['piano']", "Piano."],
            ["empty", "0", "10", "[]", ""],
            ["long-caption", "0", "10", "['piano']", long_caption],
            ["deep-aspects", "0", "10", "[" * 100_000, "Piano."]]
    with open(tmp_path / "musiccaps.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ytid", "start_s", "end_s", "aspect_list", "caption"])
        writer.writerows(rows)
    config = build_config(QaGenerateConfig, {"source": str(tmp_path / "musiccaps.csv"), "out": str(tmp_path / "out"),
                                             "llm": "template", "progress": False})
    report = write_qa_pairs(config)
    assert (report.exit_code, report.generated) == (1, 1)
    done = [strict_json(line) for line in (tmp_path / "out/qa.jsonl").read_text().splitlines()]
    assert [row["clip_id"] for row in done] == ["good.wav"]
    lines = (tmp_path / "out/failures.jsonl").read_text().splitlines()
    failures = {row["clip_id"]: row["reason"] for row in map(strict_json, lines)}
    assert failures == {
        "nan-start.wav": "source: start_s is nan; times must be finite seconds, 0 <= start_s < end_s",
        "inf-end.wav": "source: end_s is inf; times must be finite seconds, 0 <= start_s < end_s",
        "negative.wav": "source: start_s -5 is negative; times must be finite seconds, 0 <= start_s < end_s",
        "reversed.wav": "source: start_s 40 is not before end_s 30; times must be finite seconds, "
                        "0 <= start_s < end_s",
        "words.wav": "source: start_s 'thirty' is not a number",
        "empty.wav": "source: no caption and no tags to make pairs from",
        "long-caption.wav": "source: caption has 143,000 characters (at most 10,000 are read)",
        "deep-aspects.wav": "source: aspect_list has 100,000 characters (at most 10,000 are read)"}
    assert write_qa_pairs(config).generated == 0  # a rerun, even one retrying failed clips, records nothing twice
    assert write_qa_pairs(build_config(QaGenerateConfig, {**vars(config), "retry_failed": True})).exit_code == 1
    assert len((tmp_path / "out/failures.jsonl").read_text().splitlines()) == 8


def test_a_demo_manifest_row_with_a_tempo_in_words_is_recorded(tmp_path):
    corpus = demo_like_corpus(tmp_path / "corpus", 3)
    text = (corpus / "manifest.csv").read_text().splitlines()
    text[2] = text[2].replace(",90,", ",fast,")
    text[3] = text[3].replace("audio/d2.wav", "audio/d2\x00.wav")
    (corpus / "manifest.csv").write_text("\n".join(text) + "\n")
    report = write_qa_pairs(build_config(QaGenerateConfig, {"source": str(corpus), "out": str(tmp_path / "qa"),
                                                             "llm": "template", "progress": False}))
    assert (report.exit_code, report.generated) == (1, 1)
    assert [(row["clip_id"], row["reason"]) for row in report.failed] == [
        ("d1.wav", "source: tempo_bpm 'fast' is not a number of beats per minute"),
        ("d2.wav", "source: path holds a NUL byte")]


def test_a_tag_list_too_long_for_a_prompt_is_the_clips_problem(tmp_path):
    (tmp_path / "many.jsonl").write_text(json.dumps({"clip_id": "many", "tags": [f"tag{n}" for n in range(3000)]})
                                         + "\n" + json.dumps({"clip_id": "few", "tags": ["piano"]}) + "\n")
    many, few = read_source(tmp_path / "many.jsonl")
    assert many.problem.startswith("tags have ") and many.problem.endswith(" characters (at most 10,000 are read)")
    assert few.problem == ""


def test_a_ray_run_refuses_a_folder_needing_its_own_code_before_ray_starts(tmp_path, tiny_llama, monkeypatch):
    import shutil

    from mullama.data.qagen import ray_generate

    def ray_started(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray_generate, "ask_on_ray", ray_started)
    folder = tmp_path / "remote"
    shutil.copytree(tiny_llama, folder)
    settings = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**settings, "auto_map": {"AutoModelForCausalLM": "evil.EvilLM"}}))
    config = build_config(QaGenerateConfig, {"source": str(tags_source(tmp_path / "tags.jsonl", 1)),
                                             "out": str(tmp_path / "out"), "llm": str(folder), "ray": "local",
                                             "progress": False})
    with pytest.raises(MullamaError, match="auto_map"):
        write_qa_pairs(config)
