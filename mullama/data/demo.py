"""The built-in demo corpus: real pieces from music21's bundled corpus, rendered with FluidSynth.

Each clip varies the instrument (one General MIDI program for every part), tempo, transposition,
length (some clips over 60 s, to exercise windows), file format, sample rate and channel count.
Questions and answers follow from the metadata, so a listening test can check what the model
heard (the instrument is only in the audio, never in the question).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from mullama.config import option
from mullama.data.manifest import write_manifest
from mullama.data.musicqa import QAPair, write_musicqa
from mullama.errors import MullamaError

SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/default-GM.sf2")
INSTALL_HINT = ("install it with `apt-get install --no-install-recommends fluidsynth fluid-soundfont-gm` "
                "(Debian/Ubuntu) or `brew install fluid-synth` and a General MIDI soundfont")
INSTRUMENTS = {"piano": 0, "church organ": 19, "violin": 40, "trumpet": 56}
RENDER_RATE = 44100
SCORE_SUFFIXES = (".abc", ".mxl", ".krn", ".xml", ".musicxml")
FORMATS = [("wav", "WAV", "PCM_16"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III")]
RATES = [22050, 32000, 44100, 48000]
MAJOR = ["C", "D-flat", "D", "E-flat", "E", "F", "F-sharp", "G", "A-flat", "A", "B-flat", "B"]
MINOR = ["C", "C-sharp", "D", "E-flat", "E", "F", "F-sharp", "G", "G-sharp", "A", "B-flat", "B"]


@dataclass(frozen=True)
class Source:
    """A family of corpus pieces with a style description for the answers."""

    corpus_name: str
    composer: str
    style: str


SOURCES = [
    Source("bach", "Johann Sebastian Bach", "Baroque chorale"),
    Source("palestrina", "Giovanni Pierluigi da Palestrina", "Renaissance sacred polyphony"),
    Source("monteverdi", "Claudio Monteverdi", "late Renaissance madrigal"),
    Source("ryansMammoth", "a traditional composer", "traditional fiddle tune"),
]


@dataclass
class DemoConfig:
    out: str = option(help="Folder to write the corpus into", argument=True)
    clips: int = option(48, help="Number of clips to render")
    seed: int = option(0, help="Random seed: the same seed gives the same corpus")
    long_fraction: float = option(0.2, help="Share of clips longer than 60 s (exercise multi-window extraction)")
    eval_fraction: float = option(0.25, help="Share of clips held out for evaluation")
    soundfont: str = option("", help="General MIDI .sf2 file (default: the Debian fluid-soundfont-gm one)")
    workers: int = option(os.cpu_count() or 1, help="Rendering processes (the corpus is the same for any count)")


def find_fluidsynth(soundfont: str = "") -> tuple[str, str]:
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise MullamaError(f"the demo corpus is rendered with FluidSynth, which is not installed; {INSTALL_HINT}")
    candidates = [soundfont] if soundfont else list(SOUNDFONTS)
    for path in candidates:
        if path and Path(path).is_file():
            return binary, path
    raise MullamaError(f"no General MIDI soundfont found at {', '.join(candidates)}; {INSTALL_HINT}")


def key_name(tonic_pitch_class: int, mode: str) -> str:
    names = MINOR if mode == "minor" else MAJOR
    return f"{names[tonic_pitch_class % 12]} {'minor' if mode == 'minor' else 'major'}"


def tempo_word(bpm: int) -> str:
    return "slow" if bpm < 76 else ("moderate" if bpm <= 108 else "fast")


def piece_paths(source: Source) -> list[Path]:
    from music21 import corpus

    paths = [Path(p) for p in corpus.getComposer(source.corpus_name)]
    if not paths:
        import music21

        root = Path(music21.__file__).parent / "corpus" / source.corpus_name
        paths = sorted(root.glob("*"))
    if source.corpus_name == "bach":  # chorales only: the few larger works take seconds to parse
        paths = [p for p in paths if p.name.startswith("bwv")]
    return sorted(p for p in paths if p.suffix in SCORE_SUFFIXES)


def describe_piece(path: Path, bpm: int, midi_path: Path) -> dict[str, Any]:
    """Parse a corpus piece, write it as MIDI at `bpm`, and return its title, key and meter."""
    from music21 import converter, meter, stream, tempo

    score = converter.parse(str(path))
    if isinstance(score, stream.Opus):
        score = score.scores[0]
    for mark in list(score.recurse().getElementsByClass(tempo.MetronomeMark)):
        mark.activeSite.remove(mark)
    parts = list(score.parts) or [score]
    for part in parts:
        part.insert(0, tempo.MetronomeMark(number=bpm))
    signatures = list(score.recurse().getElementsByClass(meter.TimeSignature))
    key = score.analyze("key")
    title = (score.metadata.title if score.metadata and score.metadata.title else path.stem).split(" -- ")[0]
    score.write("midi", fp=str(midi_path))
    return {"title": title.strip(), "tonic": key.tonic.pitchClass, "mode": key.mode,
            "meter": signatures[0].ratioString if signatures else ""}


def arrange_midi(midi_path: Path, program: int, semitones: int, seconds: float) -> None:
    """One GM program for every part, transposed, cut a little past `seconds`."""
    import pretty_midi

    # pretty_midi refuses files over 1e7 ticks as "likely corrupt"; long masses at slow tempi are longer.
    pretty_midi.pretty_midi.MAX_TICK = max(pretty_midi.pretty_midi.MAX_TICK, 1e9)
    midi = pretty_midi.PrettyMIDI(str(midi_path))
    for instrument in midi.instruments:
        instrument.program, instrument.is_drum = program, False
        instrument.notes = [n for n in instrument.notes if n.start < seconds + 1.0]
        for note in instrument.notes:
            note.pitch = int(np.clip(note.pitch + semitones, 21, 108))
        instrument.control_changes = []
    midi.write(str(midi_path))


def render(binary: str, soundfont: str, midi_path: Path, wav_path: Path) -> np.ndarray:
    command = [binary, "-ni", "-q", "-g", "0.7", "-r", str(RENDER_RATE), "-O", "float", "-T", "wav",
               "-F", str(wav_path), soundfont, str(midi_path)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0 or not wav_path.is_file():
        raise MullamaError(f"fluidsynth failed on {midi_path.name}: {completed.stderr.strip()[:300]}")
    audio, _ = sf.read(str(wav_path), dtype="float32", always_2d=True)
    return audio


def fit_length(audio: np.ndarray, seconds: float, rate: int) -> np.ndarray:
    """Loop short renders, cut long ones, fade the last half second."""
    target = int(seconds * rate)
    trimmed = np.trim_zeros(np.abs(audio).sum(axis=1) > 1e-4, "b")
    audio = audio[: max(len(trimmed), rate)]
    if audio.shape[0] < target:
        audio = np.concatenate([audio] * (target // audio.shape[0] + 1))
    audio = audio[:target].copy()
    fade = min(rate // 2, target)
    audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
    peak = float(np.abs(audio).max()) or 1.0
    return audio * (0.8 / peak)


def write_audio(path: Path, audio: np.ndarray, rate: int, container: str, subtype: str) -> None:
    """Write in blocks: libsndfile's Vorbis encoder crashes on large single writes."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    with sf.SoundFile(str(path), "w", rate, audio.shape[1], subtype=subtype, format=container) as handle:
        for start in range(0, audio.shape[0], 8192):
            handle.write(audio[start:start + 8192])


def qa_pairs(name: str, meta: dict[str, Any], rng: random.Random) -> list[QAPair]:
    """Nine pairs per clip like MusicQA: its four fixed description questions, then open ones."""
    instrument, bpm, key, meter_text = meta["instrument"], int(meta["tempo_bpm"]), meta["key"], meta["meter"]
    word, style, composer = tempo_word(bpm), meta["style"], meta["composer"]
    metre = f", in {meter_text} time" if meter_text else ""
    instrument_answers = [f"The music is played on the {instrument}.",
                          f"It is a solo {instrument} performance.",
                          f"All the parts are played by a {instrument}."]
    pairs = [
        ("Describe the audio", f"A {word} {style} played on the {instrument} in {key}{metre}."),
        ("Describe the audio in detail", f"This is a {style} by {composer}, arranged for {instrument} alone. It is in "
                                         f"{key}{metre}, at a {word} tempo of about {bpm} beats per minute."),
        ("What do you hear in the audio?", f"I hear a {instrument} playing a {word} {style}."),
        ("What can be inferred from the audio?", f"It is probably a {style} by {composer}, performed on the "
                                                 f"{instrument}."),
        ("What instrument is playing?", rng.choice(instrument_answers)),
        ("What is the tempo of the music?", f"The tempo is {word}, about {bpm} beats per minute."),
        ("What key is the piece in?", f"The piece is in {key}."),
        ("Who might have composed this piece?", f"It sounds like a {style} by {composer}."),
    ]
    if meter_text:
        pairs.append(("What is the time signature?", f"The music is in {meter_text} time."))
    return [QAPair(name, question, answer) for question, answer in pairs]


@dataclass
class DemoCorpus:
    root: Path
    manifest: Path
    qa_train: Path
    qa_eval: Path
    clips: int


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, drawn up front so clips can render in any order or process."""

    index: int
    source: Source
    instrument: str
    piece: Path
    bpm: int
    semitones: int
    seconds: float
    extension: str
    container: str
    subtype: str
    rate: int
    channels: int
    answer_seed: int

    @property
    def name(self) -> str:
        return f"demo_{self.index:04d}.{self.extension}"


def plan_clips(config: DemoConfig) -> list[ClipPlan]:
    rng = random.Random(config.seed)
    pools = {s.corpus_name: piece_paths(s) for s in SOURCES}
    instruments = list(INSTRUMENTS)
    plans = []
    for index in range(config.clips):
        source = SOURCES[index % len(SOURCES)]
        extension, container, subtype = FORMATS[index % len(FORMATS)]
        plans.append(ClipPlan(
            index=index, source=source, instrument=instruments[(index // len(SOURCES) + index) % len(instruments)],
            piece=rng.choice(pools[source.corpus_name]), bpm=rng.randint(60, 150), semitones=rng.randint(-5, 5),
            seconds=rng.uniform(61.0, 80.0) if rng.random() < config.long_fraction else rng.uniform(8.0, 40.0),
            extension=extension, container=container, subtype=subtype, rate=rng.choice(RATES),
            channels=rng.choice([1, 2]), answer_seed=rng.randrange(2**31)))
    return plans


def render_clip(plan: ClipPlan, binary: str, soundfont: str, audio_dir: Path) -> dict[str, Any]:
    """Render one planned clip to its file and return its manifest row."""
    with tempfile.TemporaryDirectory() as scratch:
        midi_path, wav_path = Path(scratch) / "piece.mid", Path(scratch) / "piece.wav"
        piece_meta = describe_piece(plan.piece, plan.bpm, midi_path)
        arrange_midi(midi_path, INSTRUMENTS[plan.instrument], plan.semitones, plan.seconds)
        audio = fit_length(render(binary, soundfont, midi_path, wav_path), plan.seconds, RENDER_RATE)
    audio = soxr.resample(audio, RENDER_RATE, plan.rate) if plan.rate != RENDER_RATE else audio
    audio = audio.mean(axis=1, keepdims=True) if plan.channels == 1 else audio
    write_audio(audio_dir / plan.name, audio, plan.rate, plan.container, plan.subtype)
    return {
        "clip_id": plan.name, "path": f"audio/{plan.name}", "source_piece": f"{plan.source.corpus_name}/{plan.piece.name}",
        "title": piece_meta["title"], "composer": plan.source.composer, "style": plan.source.style,
        "key": key_name(piece_meta["tonic"] + plan.semitones, piece_meta["mode"]), "meter": piece_meta["meter"],
        "tempo_bpm": plan.bpm, "transpose_semitones": plan.semitones, "instrument": plan.instrument,
        "gm_program": INSTRUMENTS[plan.instrument], "duration_s": round(audio.shape[0] / plan.rate, 3),
        "sample_rate": plan.rate, "channels": plan.channels, "format": plan.extension,
    }


def build_demo_corpus(config: DemoConfig) -> DemoCorpus:
    """Render `config.clips` clips into `config.out`; deterministic for a seed, whatever the worker count."""
    binary, soundfont = find_fluidsynth(config.soundfont)
    out = Path(config.out)
    audio_dir = out / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_clips(config)
    render = functools.partial(render_clip, binary=binary, soundfont=soundfont, audio_dir=audio_dir)
    workers = max(1, min(config.workers, len(plans)))
    if workers == 1:
        rows = [render(plan) for plan in plans]
    else:  # music21 parsing is the slow part and holds the GIL: processes, not threads
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(render, plans))
    held_out = set(split_eval([r["clip_id"] for r in rows], [r["instrument"] for r in rows],
                              config.eval_fraction, config.seed))
    for row in rows:
        row["split"] = "eval" if row["clip_id"] in held_out else "train"
    manifest = out / "manifest.csv"
    write_manifest(manifest, rows)
    pairs = {plan.name: qa_pairs(plan.name, row, random.Random(plan.answer_seed)) for plan, row in zip(plans, rows)}
    qa_train, qa_eval = out / "qa_train.json", out / "qa_eval.json"
    write_musicqa(qa_train, [p for r in rows if r["split"] == "train" for p in pairs[r["clip_id"]]])
    write_musicqa(qa_eval, [p for r in rows if r["split"] == "eval" for p in pairs[r["clip_id"]]])
    return DemoCorpus(out, manifest, qa_train, qa_eval, len(rows))


def split_eval(clip_ids: list[str], strata: list[str], fraction: float, seed: int) -> list[str]:
    """Hold out `fraction` of the clips of every stratum (e.g. instrument), deterministically."""
    rng = random.Random(f"split-{seed}")
    held_out = []
    for stratum in sorted(set(strata)):
        members = sorted(c for c, s in zip(clip_ids, strata) if s == stratum)
        rng.shuffle(members)
        held_out += members[: int(round(len(members) * fraction))]
    return sorted(held_out)
