"""MuMu-LLaMA's music generation and editing (issue "MuMu-LLaMA, part 2"): conditioning targets stored once, the
output tokens and projector trained against them, `mullama generate` and `mullama edit` through tiny MusicGen and
MusicGen-Melody folders."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from transformers import EncodecModel

from mullama.encoder_identity import EncoderIdentity
from mullama.errors import MullamaError
from mullama.fixtures.audioldm2 import write_random_audioldm2
from mullama.fixtures.generation_demo import GenerationSteps, Probe, audible_init, run_generation_steps
from mullama.fixtures.musicgen import musicgen_config, write_random_musicgen
from mullama.model import MusicLlama
from mullama.music.decoders import KINDS, decoder_kind, decoder_space, load_decoder
from mullama.music.generator import MusicGenerator
from mullama.music.musicgen import MusicGenDecoder, chroma_frames, read_space
from mullama.music.pairs import GenerationPair, read_generation_pairs, write_generation_pairs
from mullama.music.space import ConditioningSpace
from mullama.music.targets import CHUNK_ROWS, PROGRESS, ConditioningTargets, write_targets
from mullama.serve.config import EditConfig, GenerateConfig
from mullama.serve.generate import run_edit, run_generate
from mullama.store import FeatureStore
from mullama.train.config import GeneratorTargetsConfig, GeneratorTrainConfig
from mullama.train.generator import run_generator_training, run_targets
from tests.helpers import tone_store, write_tone
from tests.test_server import API_KEY, Server

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a calm piano melody in C major", "a loud trumpet fanfare", "a slow violin solo", "an organ chorale"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mullama.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_mert, tiny_llama):
    """A tone store, an untrained adapter on the tiny LLaMA, tiny MusicGen and MusicGen-Melody folders, pairs."""
    root = tmp_path_factory.mktemp("generation")
    clips = tone_store(root, tiny_mert, 4)
    adapter = root / "adapter"
    model = MusicLlama.create(tiny_llama, FeatureStore.open(str(root / "store")).encoder, device="cpu")
    with torch.no_grad():
        model.model.music_adapter.gates.fill_(0.5)  # as if trained: zero gates would hide the track
    model.save(adapter)
    musicgen = write_random_musicgen(root / "musicgen", "tiny", texts=CAPTIONS)
    melody = write_random_musicgen(root / "melody", "tiny", texts=CAPTIONS, melody=True)
    pairs = [GenerationPair(f"Compose {c}", c) for c in CAPTIONS]
    pairs += [GenerationPair("Play this on the trumpet", CAPTIONS[1], clips[0]),
              GenerationPair("Make it an organ chorale", CAPTIONS[3], clips[1])]
    write_generation_pairs(root / "pairs.json", pairs)
    return {"root": root, "clips": clips, "adapter": adapter, "musicgen": musicgen, "melody": melody,
            "pairs": root / "pairs.json", "store": root / "store", "llama": tiny_llama, "mert": tiny_mert}


def test_pairs_file_keeps_good_entries_and_says_why_others_are_left_out(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"request": "a", "caption": "b"}, {"request": "", "caption": "b"}, 7,
                                {"request": "a", "caption": 3}, {"request": "x", "caption": "y", "clip_id": "c.wav"}]))
    pairs, skipped = read_generation_pairs(path)
    assert pairs == [GenerationPair("a", "b"), GenerationPair("x", "y", "c.wav")]
    assert len(skipped) == 3 and "empty request" in skipped[0] and "not a JSON object" in skipped[1]


def test_the_decoder_registry_says_which_kinds_follow_a_recording():
    assert {name: kind.follows_recording for name, (kind, _) in KINDS.items()} == {
        "audioldm2": False, "musicgen": False, "musicgen_melody": True}


def test_records_round_trip_fill_defaults_of_old_records_and_need_the_rest():
    space = ConditioningSpace(8, "config", "tokenizer", "weights")
    assert ConditioningSpace.from_dict({**space.to_dict(), "added_later": 1}) == space
    with pytest.raises(KeyError):
        ConditioningSpace.from_dict({"width": 8, "config_hash": "config", "tokenizer_hash": "tokenizer"})
    identity = EncoderIdentity("mert", "config", "weights", 24000, 13, 768)
    written_before_kinds = {k: v for k, v in identity.to_dict().items() if k not in ("modality", "kind")}
    assert EncoderIdentity.from_dict(written_before_kinds) == identity  # an old record: a MERT audio encoder


def test_chroma_names_the_pitch_class_of_a_tone():
    """An independent reference: a 440 Hz tone is an A (class 9 with C as class 0), 261.63 Hz a C."""
    rate = 32000
    time = np.arange(rate * 2) / rate
    for frequency, pitch_class in ((440.0, 9), (261.63, 0), (392.0, 7)):
        frames = chroma_frames(np.sin(2 * np.pi * frequency * time).astype(np.float32), rate)
        assert frames.shape[1] == 12 and torch.all(frames.sum(1) == 1)
        assert (frames.argmax(1) == pitch_class).float().mean() > 0.9


def test_targets_are_stored_once_resume_after_a_kill_and_refuse_other_captions(setup, tmp_path):
    decoder = MusicGenDecoder.load(setup["musicgen"], device="cpu")
    space = read_space(setup["musicgen"]).to_dict()
    texts = [f"caption number {i}" for i in range(CHUNK_ROWS + 3)]  # two chunks
    calls = []

    def encode(batch):
        calls.append(len(batch))
        if len(calls) == 2 and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            raise KeyboardInterrupt  # killed while encoding the second chunk
        return decoder.text_conditioning(batch, 16)[0]

    with pytest.raises(KeyboardInterrupt):
        write_targets(tmp_path / "t", texts, space, 16, decoder.space.width, encode, progress=False)
    assert (tmp_path / "t" / PROGRESS).is_file()
    with pytest.raises(MullamaError, match="no complete conditioning targets"):
        ConditioningTargets.open(tmp_path / "t")
    report = write_targets(tmp_path / "t", texts, space, 16, decoder.space.width, encode, progress=False)
    assert report.computed == 3 and calls == [CHUNK_ROWS, 3, 3]  # only the unrecorded chunk again
    targets = ConditioningTargets.open(tmp_path / "t")
    expected, mask = decoder.text_conditioning(texts[CHUNK_ROWS - 1:CHUNK_ROWS + 1], 16)
    got = targets.rows([targets.index[t] for t in texts[CHUNK_ROWS - 1:CHUNK_ROWS + 1]])
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=2e-3)  # float16 storage
    assert np.all(got[~mask] == 0) and targets.verify() == []
    again = write_targets(tmp_path / "t", texts, space, 16, decoder.space.width, encode, progress=False)
    assert again.computed == 0
    with pytest.raises(MullamaError, match="other captions"):
        write_targets(tmp_path / "t", texts[:5], space, 16, decoder.space.width, encode, progress=False)


def test_train_generate_and_edit_from_the_command_line(setup, tmp_path):
    root = setup["root"]
    result = cli("generator", "targets", "--pairs", str(setup["pairs"]), "--musicgen", str(setup["melody"]),
                 "--out", str(root / "targets"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "4 captions" in result.stdout
    common = ["--pairs", str(setup["pairs"]), "--targets", str(root / "targets"), "--adapter", str(setup["adapter"]),
              "--llama", str(setup["llama"]), "--musicgen", str(setup["melody"]), "--store", str(setup["store"]),
              "--layers", "1", "--batch-size", "2", "--lr", "3e-3", "--warmup-steps", "0", "--log-every", "5",
              "--save-every", "5", "--device", "cpu", "--no-progress"]
    # a run that stops at step 10 and resumes to 20 ends exactly where a straight 20-step run ends
    assert cli("generator", "train", *common, "--out", str(tmp_path / "run"), "--steps", "10").returncode == 0
    resumed = cli("generator", "train", *common, "--out", str(tmp_path / "run"), "--steps", "20", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = cli("generator", "train", *common, "--out", str(tmp_path / "straight"), "--steps", "20")
    assert straight.returncode == 0, straight.stderr
    assert "(2 edits)" in straight.stdout
    a = load_file(str(tmp_path / "run" / "generator" / "generator.safetensors"))
    b = load_file(str(tmp_path / "straight" / "generator" / "generator.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    again = cli("generator", "train", *common, "--out", str(tmp_path / "straight"), "--steps", "20")
    assert again.returncode == 2 and "--resume" in again.stderr

    generator = tmp_path / "straight" / "generator"
    song = tmp_path / "song.wav"
    made = cli("generate", "Compose a calm piano melody", "--generator", str(generator), "--out", str(song),
               "--seconds", "0.5", "--device", "cpu")
    assert made.returncode == 0, made.stderr
    audio, rate = sf.read(song)
    assert rate == 32000 and len(audio) == 25 * 640 and np.abs(audio).max() > 0
    exists = cli("generate", "x", "--generator", str(generator), "--out", str(song), "--device", "cpu")
    assert exists.returncode == 2 and "--overwrite" in exists.stderr

    write_tone(tmp_path / "input.wav", 1.0, 24000, 330.0)
    edited = tmp_path / "edited.flac"
    result = cli("edit", str(tmp_path / "input.wav"), "Play this on the trumpet", "--generator", str(generator),
                 "--mert", str(setup["mert"]), "--out", str(edited), "--seconds", "0.5", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sf.info(str(edited)).format == "FLAC" and sf.info(str(edited)).frames == 25 * 640
    plain = cli("edit", str(tmp_path / "input.wav"), "x", "--generator", str(generator), "--mert", str(setup["mert"]),
                "--musicgen", str(setup["musicgen"]), "--out", str(tmp_path / "e.wav"), "--device", "cpu")
    assert plain.returncode == 2 and "text encoder" in plain.stderr  # another T5 than the targets': refused first
    wrong = cli("generate", "x", "--generator", str(generator), "--out", str(tmp_path / "x.mp3"))
    assert wrong.returncode == 2 and ".wav or .flac" in wrong.stderr
    serve_music(setup, generator, tmp_path / "input.wav")


def serve_music(setup, generator: Path, recording: Path) -> None:
    """The HTTP server answers OpenAI's audio-output requests with music, through the official client."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    server = Server(["--adapter", str(setup["adapter"]), "--llama", str(setup["llama"]), "--mert", str(setup["mert"]),
                     "--generator", str(generator), "--store", str(setup["store"]), "--audio-root",
                     str(setup["root"] / "audio"), "--port", "0", "--device", "cpu", "--api-key", API_KEY], env)
    try:
        client = openai.OpenAI(api_key=API_KEY, base_url=server.url + "/v1", max_retries=0, timeout=120)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(model=model, modalities=["text", "audio"], seed=3,
                                               audio={"format": "flac", "voice": "alloy"},
                                               messages=[{"role": "user", "content": "Compose a slow violin solo"}],
                                               extra_body={"seconds": 0.3})
        audio, rate = sf.read(io.BytesIO(base64.b64decode(reply.choices[0].message.audio.data)))
        assert rate == 32000 and len(audio) == 15 * 640
        part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(recording.read_bytes()).decode(),
                                                       "format": "wav"}}
        edit = client.chat.completions.create(model=model, modalities=["audio"], audio={"format": "wav", "voice": "x"},
                                              messages=[{"role": "user", "content": [
                                                  {"type": "text", "text": "Play this on the trumpet"}, part]}],
                                              extra_body={"seconds": 0.3})
        assert sf.info(io.BytesIO(base64.b64decode(edit.choices[0].message.audio.data))).frames == 15 * 640

        def stored_edit() -> bytes:  # an edit of a stored clip: Melody follows its file under --audio-root
            made = client.chat.completions.create(
                model=model, modalities=["audio"], audio={"format": "wav", "voice": "x"}, seed=5,
                messages=[{"role": "user", "content": "Play this on the trumpet"}],
                extra_body={"seconds": 0.3, "clip_id": setup["clips"][0]})
            return base64.b64decode(made.choices[0].message.audio.data)

        followed = stored_edit()
        assert stored_edit() == followed and sf.info(io.BytesIO(followed)).frames == 15 * 640  # seeded
        # (the random tiny Melody barely hears its conditioning, so whether the file is read shows by breaking it)
        source = next((setup["root"] / "audio").glob(Path(setup["clips"][0]).name))
        kept = source.read_bytes()
        source.write_bytes(b"not audio at all")
        try:
            status, body = server.request("POST", "/v1/chat/completions", {
                "model": model, "modalities": ["audio"], "seconds": 0.3, "clip_id": setup["clips"][0],
                "messages": [{"role": "user", "content": "Play this on the trumpet"}]})
            assert status == 400 and body["error"]["param"] == "clip_id", body
            assert str(setup["root"]) not in body["error"]["message"]  # no server paths in the reply
        finally:
            source.write_bytes(kept)
        status, body = server.request("POST", "/v1/chat/completions", {
            "model": model, "modalities": ["audio"], "stream": True, "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and "stream" in body["error"]["message"]
        status, body = server.request("POST", "/v1/chat/completions", {
            "model": model, "modalities": ["audio"], "seconds": 999, "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and "limit" in body["error"]["message"]
        status, body = server.request("POST", "/v1/chat/completions", {  # the tiny decoder holds about 10 s
            "model": model, "modalities": ["audio"], "seconds": 25, "messages": [{"role": "user", "content": "x"}]})
        assert status == 400 and "seconds" in body["error"]["message"]
    finally:
        server.stop()


def test_trained_rows_move_toward_their_targets_and_the_track_matters(setup, tmp_path):
    """In-process: the head learns its captions' rows; an edit's rows depend on the track's stacks. (The fixture's
    T5 tokenizer is trained anew each session and not always the same, so the run is long enough to converge.)"""
    run_targets(GeneratorTargetsConfig(pairs=[str(setup["pairs"])], musicgen=str(setup["musicgen"]),
                                       out=str(tmp_path / "targets"), length=16, progress=False))
    targets = ConditioningTargets.open(tmp_path / "targets")
    report = run_generator_training(GeneratorTrainConfig(
        pairs=[str(setup["pairs"])], targets=str(tmp_path / "targets"), adapter=str(setup["adapter"]),
        llama=str(setup["llama"]), out=str(tmp_path / "run"), store=str(setup["store"]), layers=2, steps=600,
        batch_size=4, lr=2e-3, warmup_steps=0, device="cpu", log_every=20, progress=False))
    assert report.losses[-1] < 0.5 * report.losses[0]
    generator = MusicGenerator.load(tmp_path / "run" / "generator", device="cpu")
    requests = [f"Compose {c}" for c in CAPTIONS]
    rows = generator.rows(requests)
    wanted = targets.rows([targets.index[c] for c in CAPTIONS])
    distance = ((rows[:, None] - wanted[None]) ** 2).mean(axis=(2, 3))  # request x caption
    assert np.all(distance.argmin(axis=1) == np.arange(len(CAPTIONS)))  # each request is nearest its own caption
    stacks = FeatureStore.open(str(setup["store"])).get(setup["clips"][:2])
    edits = generator.rows(["Play this on the trumpet"] * 2, stacks)
    assert not np.allclose(edits[0], edits[1])  # the adapter carries the track into the rows


def test_decoder_follows_the_melody_and_refuses_it_without_melody_model(setup):
    melody = MusicGenDecoder.load(setup["melody"], device="cpu")
    rows = np.random.default_rng(0).normal(0, 0.1, (1, 8, melody.space.width)).astype(np.float32)
    time = np.arange(32000) / 32000
    low, high = (np.sin(2 * np.pi * f * time).astype(np.float32) for f in (261.63, 440.0))
    chroma = [[chroma_frames(m, 32000)] for m in (low, high)]
    start = torch.full((4, 3), melody.model.generation_config.decoder_start_token_id)
    with torch.no_grad():  # the decoder's next-code logits change with the melody it is given
        logits = [melody.model(encoder_hidden_states=melody._melody_states(torch.from_numpy(rows), c),
                               decoder_input_ids=start).logits for c in chroma]
    assert not torch.allclose(logits[0], logits[1])
    output = melody.generate(rows, 0.3, seed=0, melody=[low], melody_rate=32000)
    assert output.shape == (1, 15 * 640)
    assert np.array_equal(output, melody.generate(rows, 0.3, seed=0, melody=[low], melody_rate=32000))  # seeded
    plain = MusicGenDecoder.load(setup["musicgen"], device="cpu")
    with pytest.raises(MullamaError, match="MusicGen-Melody"):
        plain.generate(rows, 0.3, melody=[low], melody_rate=32000)
    with pytest.raises(MullamaError, match="seconds"):
        plain.generate(rows, 0.0)
    assert plain.generate(rows, 0.3, seed=1, guidance=1.0).shape == (1, 15 * 640)


def test_generation_demo_steps_run_and_report_on_a_small_corpus(setup, tmp_path):
    """`mullama demo --generation` on a small corpus of the demo's layout with a few steps of each: the mini
    MusicGen, pairs, targets, the generator and the check run and report; a rerun reuses what exists. (Whether the
    request reaches the audio is a matter of training length: the full demo's numbers are in BENCHMARKS.md.)"""
    corpus = tmp_path / "corpus"
    rows = []
    for number in range(6):
        instrument = ("trumpet", "violin")[number % 2]
        write_tone(corpus / "audio" / f"c{number}.wav", 4.0, 16000, 220.0 * (1 + number % 2), seed=number)
        rows.append({"clip_id": f"c{number}.wav", "path": f"audio/c{number}.wav", "instrument": instrument,
                     "style": "chorale", "tempo_bpm": "100", "split": "train" if number < 4 else "eval"})
    with open(corpus / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines: list[str] = []
    steps = GenerationSteps(codec=2, decoder=2, generator=2, outputs=2)
    result = run_generation_steps(tmp_path / "out", corpus, setup["llama"], setup["adapter"], setup["mert"], steps, 0,
                                  "cpu", False, lines.append)
    assert result.check == ("trumpet", "violin") and 0.0 <= result.separation <= 1.0
    assert 0.0 < result.p_value <= 1.0 and result.rows_named in {n / 6 for n in range(7)}  # 3 wordings x 2
    assert list(result.pairs) == ["trumpet vs violin"] and len(result.losses) == 1
    assert [sf.info(str(p)).frames for p in result.samples] == [int(5.0 * 32000)] * 2
    assert [line.split(" ", 2)[1] for line in lines if line.startswith("[")] == ["1/4]", "2/4]", "3/4]", "4/4]"]
    assert not list((tmp_path / "out" / "generation").glob("*.tmp"))
    again = run_generation_steps(tmp_path / "out", corpus, setup["llama"], setup["adapter"], setup["mert"], steps, 0,
                                 "cpu", False, lines.append)  # the models are reused: the same seeded outputs
    assert again.separation == result.separation and again.codec_probe == result.codec_probe
    assert not any("other settings" in line for line in lines)
    stamp = (tmp_path / "out" / "generation" / "musicgen-mini" / "mullama_demo.json").stat().st_mtime_ns
    longer = GenerationSteps(codec=2, decoder=2, generator=3, outputs=2)  # other settings: nothing old is reused
    changed = run_generation_steps(tmp_path / "out", corpus, setup["llama"], setup["adapter"], setup["mert"], longer,
                                   0, "cpu", False, lines.append)
    assert any("other settings" in line for line in lines) and len(changed.losses) == 1
    assert (tmp_path / "out" / "generation" / "musicgen-mini" / "mullama_demo.json").stat().st_mtime_ns != stamp
    assert json.loads((tmp_path / "out" / "generation" / "train" / "log.jsonl").read_text().splitlines()[-1])[
        "step"] == 3


def test_demo_codec_starts_hearing_its_latent():
    """At EnCodec's default init the mini decoder's output barely depends on its input, which let training settle
    on one average sound for every clip; the demo's init makes the input matter from the start."""
    def sensitivity(codec: EncodecModel) -> float:
        generator = torch.Generator().manual_seed(1)
        first, second = (torch.randn(1, 16, 50, generator=generator) for _ in range(2))
        with torch.no_grad():
            a, b = codec.decoder(first), codec.decoder(second)
        return float((a - b).abs().mean() / a.abs().mean())

    torch.manual_seed(0)
    codec = EncodecModel(musicgen_config("mini", False).audio_encoder).eval()
    before = sensitivity(codec)
    audible_init(codec)
    assert before < 0.1 < 0.5 < sensitivity(codec)


def test_demo_probe_p_value_matches_exact_enumeration():
    """The separation's permutation p-value against every split of 3 + 3 scores counted exhaustively."""
    probe = Probe.__new__(Probe)
    probe.centroids = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 0.0])}
    scores = np.array([0.9, 0.4, 0.7, 0.1, 0.5, 0.2])
    outputs = {"a": np.c_[scores[:3], np.zeros(3)], "b": np.c_[scores[3:], np.zeros(3)]}

    def share(first: np.ndarray, second: np.ndarray) -> float:
        return float(np.mean([x > y for x in first for y in second]))

    observed = share(scores[:3], scores[3:])
    splits = [share(scores[list(c)], scores[[i for i in range(6) if i not in c]]) for c in combinations(range(6), 3)]
    exact = np.mean([s >= observed for s in splits])
    assert probe.separation("a", "b", outputs) == observed == 8 / 9
    assert abs(probe.p_value("a", "b", outputs, seed=0) - exact) < 0.01  # exact: 2 of 20 splits


@pytest.fixture(scope="module")
def audioldm2(setup):
    return write_random_audioldm2(setup["root"] / "audioldm2", texts=CAPTIONS)


def test_audioldm2_rows_and_audio_are_the_pipelines_own(audioldm2):
    """The independent reference is diffusers' own prompt path: the packed rows unpack to exactly what
    `encode_prompt` gives a caption, and generating from them matches the pipeline run on the caption's words."""
    assert decoder_kind(audioldm2) == "audioldm2" and decoder_space(audioldm2).width == 32  # max(T5 32, GPT-2 16)
    decoder = load_decoder(audioldm2, device="cpu")
    rows, mask = decoder.text_conditioning(CAPTIONS[:2], 40)
    assert rows.shape == (2, 48, 32) and mask.shape == (2, 48) and not np.allclose(rows[0], rows[1])
    for number, caption in enumerate(CAPTIONS[:2]):
        t5_rows, t5_mask, generated = decoder.pipeline.encode_prompt([caption], "cpu", 1, False)
        tokens = t5_rows.shape[1]
        assert mask[number].sum() == tokens + 8 and not rows[number, tokens:40].any()  # zero padding after T5
        np.testing.assert_allclose(rows[number, :tokens, :32], t5_rows[0].numpy(), atol=1e-6)
        np.testing.assert_allclose(rows[number, 40:, :16], generated[0].numpy(), atol=1e-6)
        assert not rows[number, 40:, 16:].any()  # GPT-2's 16-wide rows are zero-filled to 32
        ours = decoder.generate(rows[number:number + 1], 0.5, guidance=1.0, steps=3, seed=7)
        theirs = decoder.pipeline(prompt=caption, audio_length_in_s=0.5, num_inference_steps=3, guidance_scale=1.0,
                                  generator=torch.Generator().manual_seed(7)).audios
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
        assert ours.shape == (1, 8000) and np.abs(ours).max() > 1e-3  # audible in a 16-bit file
    guided = decoder.generate(rows, 0.5, steps=3, seed=7)
    assert np.array_equal(guided, decoder.generate(rows, 0.5, steps=3, seed=7))  # seeded
    assert not np.allclose(guided[0], guided[1])  # the two captions are heard
    with pytest.raises(MullamaError, match="MusicGen-Melody"):
        decoder.generate(rows, 0.5, steps=3, melody=[np.zeros(16000, np.float32)], melody_rate=16000)
    with pytest.raises(MullamaError, match="--seconds"):
        decoder.generate(rows, 0.001, steps=3)


def test_generate_through_audioldm2_from_the_command_line(setup, audioldm2, tmp_path):
    """Targets, training and `mullama generate` with an AudioLDM2 folder in --musicgen's place; an edit and a
    MusicGen folder are refused before any weight loads."""
    targets = tmp_path / "targets"
    made = cli("generator", "targets", "--pairs", str(setup["pairs"]), "--musicgen", str(audioldm2), "--out",
               str(targets), "--length", "24", "--device", "cpu")
    assert made.returncode == 0, made.stderr
    manifest = json.loads((targets / "targets.json").read_text())
    assert manifest["length"] == 32 and manifest["width"] == 32  # 24 T5 rows + GPT-2's 8, at T5's width
    trained = cli("generator", "train", "--pairs", str(setup["pairs"]), "--targets", str(targets), "--adapter",
                  str(setup["adapter"]), "--llama", str(setup["llama"]), "--musicgen", str(audioldm2), "--store",
                  str(setup["store"]), "--out", str(tmp_path / "run"), "--steps", "6", "--batch-size", "2",
                  "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    generator = tmp_path / "run" / "generator"
    song = tmp_path / "song.wav"
    result = cli("generate", "Compose a loud trumpet fanfare", "--generator", str(generator), "--out", str(song),
                 "--seconds", "0.5", "--steps", "3", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    audio, rate = sf.read(song)
    assert rate == 16000 and len(audio) == 8000 and np.abs(audio).max() > 0
    write_tone(tmp_path / "input.wav", 1.0, 24000, 330.0)
    with pytest.raises(MullamaError, match="MusicGen-Melody"):  # in-process: both refusals come before any weights
        run_edit(EditConfig(input=str(tmp_path / "input.wav"), request="x", generator=str(generator),
                            mert=str(setup["mert"]), out=str(tmp_path / "e.wav"), device="cpu"))
    with pytest.raises(MullamaError, match="text encoder"):
        run_generate(GenerateConfig(request="x", generator=str(generator), musicgen=str(setup["musicgen"]),
                                    out=str(tmp_path / "o.wav"), device="cpu"))


def test_init_audioldm2_writes_a_loadable_pipeline_and_decoder_folders_are_told_apart(tmp_path):
    made = cli("models", "init-audioldm2", str(tmp_path / "a"), timeout=120)
    assert made.returncode == 0, made.stderr
    assert decoder_kind(tmp_path / "a") == "audioldm2"
    assert "RANDOM" in (tmp_path / "a" / "mullama_random_weights.json").read_text()
    assert cli("models", "init-audioldm2", str(tmp_path / "b"), "--size", "large").returncode == 2
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for folder, message in (("file", "is a file"), ("missing", "does not exist"), ("empty", "neither")):
        with pytest.raises(MullamaError, match=message):
            decoder_kind(tmp_path / folder)
