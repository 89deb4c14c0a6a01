"""The one path from a request to audio (docs/generation.md): the requests [and a track's stacks] -> the
generator's conditioning rows -> the frozen decoder -> audio samples, the decoder following the track's recording
when its kind can. `mullama generate` and `mullama edit`, the server and the demo all go through it.

    audio = compose(generator, decoder, ["a calm piano piece"], Sampling(seconds=8, seed=0))   # (1, samples)
    audio = compose(generator, decoder, ["play this on a violin"], sampling, stacks, recording=read)  # an edit
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from mullama.music.audioldm2 import DEFAULT_STEPS
from mullama.music.decoder import MusicDecoder
from mullama.music.decoders import follows_recording
from mullama.music.generator import MusicGenerator

# The recording to follow, read at the decoder's sampling rate; called only when the decoder can follow one.
Recording = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Sampling:
    """How the decoder samples; each decoder takes the settings its `sampling_keywords` name."""

    seconds: float
    seed: int | None = None
    guidance: float | None = None  # None: the decoder's own default (MusicGen 3, AudioLDM2 3.5)
    steps: int = DEFAULT_STEPS  # AudioLDM2's denoising steps
    top_k: int = 250  # MusicGen: each code sampled from the k likeliest (its default)
    temperature: float = 1.0  # MusicGen: 0 is greedy

    def keywords(self, decoder: MusicDecoder) -> dict[str, Any]:
        chosen = {name: getattr(self, name) for name in decoder.sampling_keywords}
        return chosen if self.guidance is None else {"guidance": self.guidance, **chosen}


def render(decoder: MusicDecoder, rows: np.ndarray, sampling: Sampling, recording: Recording | None = None
           ) -> np.ndarray:
    """(B, samples) float32 audio at the decoder's rate from (B, rows, width) conditioning rows; every row follows
    `recording` when the decoder's kind can follow one (without it, or with another kind, the rows alone)."""
    rate = decoder.sampling_rate
    melody = None
    if recording is not None and follows_recording(decoder):
        melody = [recording(rate)] * len(rows)
    return decoder.generate(rows, sampling.seconds, seed=sampling.seed, melody=melody, melody_rate=rate,
                            **sampling.keywords(decoder))


def compose(generator: MusicGenerator, decoder: MusicDecoder, requests: Sequence[str], sampling: Sampling,
            stacks: np.ndarray | None = None, recording: Recording | None = None) -> np.ndarray:
    """(B, samples) audio for the requests, with both models loaded (the server keeps them; the demo batches);
    `stacks`: (B, layers, width) track stacks the LLaMA hears through the adapter (an edit)."""
    return render(decoder, generator.rows(requests, stacks), sampling, recording)


def compose_in_turn(load_generator: Callable[[], MusicGenerator], load_decoder: Callable[[], MusicDecoder],
                    requests: Sequence[str], sampling: Sampling, stacks: np.ndarray | None = None,
                    recording: Recording | None = None) -> tuple[np.ndarray, MusicDecoder]:
    """`compose` for a one-shot command, loading the models one after the other: the generator (and its LLaMA)
    is freed before the decoder loads, so the two never need memory at once. (audio, the decoder that made it)."""
    rows = load_generator().rows(requests, stacks)
    decoder = load_decoder()
    return render(decoder, rows, sampling, recording), decoder
