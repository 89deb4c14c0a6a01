"""`mullama ask`: one track, a question, the answer streamed to the terminal; `--chat` keeps the conversation.

The track is a stored clip (its whole-clip stack) or an audio file, which goes through extraction's own code
path (the same windows, pooling and store precision) after its encoder is checked against the adapter's.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mullama.encoder_identity import AUDIO, MERT, EncoderIdentity
from mullama.errors import MullamaError
from mullama.extract.kinds import registered_kinds
from mullama.extract.query_track import QueryTrack
from mullama.knn.clip_index import open_index
from mullama.model import KnnMix, MusicLlama
from mullama.model.checkpoint import AdapterManifest, read_manifest
from mullama.model.identity import check_encoder
from mullama.model.prompts import Turn, prompt_ids
from mullama.serve.config import AskConfig
from mullama.store.feature_store import FeatureStore
from mullama.store.schema import StoreSettings


@dataclass
class AskReport:
    turns: list[Turn] = field(default_factory=list)
    dropped_turns: int = 0  # earlier turns left out to fit the model's context
    exit_code: int = 0

    def lines(self) -> list[str]:
        return [f"(left out the {self.dropped_turns} oldest turns to fit the model's context)"] \
            if self.dropped_turns else []


def track_stack(config: AskConfig, trained: EncoderIdentity | None) -> tuple[np.ndarray, EncoderIdentity]:
    """(the (L+1, H) stack, its encoder identity) of --clip or --audio."""
    if config.clip and config.audio:
        raise MullamaError("give one of --clip (with --store) or --audio (with --mert), not both")
    store = FeatureStore.open(config.store) if config.store else None
    if config.clip:
        if store is None:
            raise MullamaError("--clip needs --store: the feature store holding the clip")
        if config.clip not in store:
            raise MullamaError(f"clip {config.clip!r} is not a stored clip of {config.store}")
        return store.get([config.clip])[0].astype(np.float32), store.encoder
    if not config.mert:
        raise MullamaError("--audio needs --mert: the MERT folder the adapter was trained with")
    if not Path(config.audio).is_file():
        raise MullamaError(f"--audio {config.audio} is not a file")
    settings = store.effective_settings() if store is not None else StoreSettings()
    track = QueryTrack.open(MERT, config.mert, functools.partial(check_encoder, trained, strict=True), settings,
                            config.device)
    return track.stack(config.audio), track.identity


def visual_matrices(config: AskConfig, manifest: AdapterManifest) -> dict[str, tuple[np.ndarray, EncoderIdentity]]:
    """{modality: (its (tokens, H) matrix, encoder identity)} of --image and --video (each registered kind of
    another modality than audio, by its modality's option and its folder's option), encoded as extraction would."""
    found = {}
    for kind in registered_kinds():
        path = getattr(config, kind.modality, "") if kind.modality != AUDIO else ""
        if not path:
            continue
        trained = manifest.encoder_for(kind.modality)  # an adapter without this branch: say so first
        folder = getattr(config, kind.option)
        if not folder:
            raise MullamaError(f"--{kind.modality} needs --{kind.option}: the {kind.name} folder the adapter's "
                               f"{kind.modality} branch was trained with")
        if not Path(path).is_file():
            raise MullamaError(f"--{kind.modality} {path} is not a file")
        track = QueryTrack.open(kind.name, folder, functools.partial(check_encoder, trained, strict=True),
                                StoreSettings(), config.device)
        found[kind.modality] = (track.stack(path), track.identity)
    return found


def ask_inputs(config: AskConfig, manifest: AdapterManifest) -> tuple[Any, Any]:
    """(what the model is asked about, the encoder identities to check): one stack for MU-LLaMA's adapter, or
    {modality: stack} for a multi-modal one."""
    inputs = visual_matrices(config, manifest)
    if config.clip or config.audio:
        inputs["audio"] = track_stack(config, manifest.encoder_for("audio"))
    if not inputs:
        raise MullamaError("give what to ask about: --clip (with --store) or --audio (with --mert), and/or --image "
                           "(with --vit) or --video (with --vivit) for a multi-modal adapter")
    if not manifest.config.branches:
        return inputs["audio"]
    if config.knn:
        raise MullamaError("--knn applies to MU-LLaMA's audio adapter only, not to a multi-modal one")
    return ({m: stack for m, (stack, _) in inputs.items()}, {m: identity for m, (_, identity) in inputs.items()})


def knn_mix(config: AskConfig) -> Any:
    if not config.knn:
        return None
    return KnnMix(open_index(config.knn, config.store), weight=config.knn_weight)


def fit_history(model: Any, question: str, history: list[Turn], max_new_tokens: int) -> int:
    """Drop the oldest turns until prompt + answer fit the model's positions; return how many were dropped."""
    limit = int(getattr(model.model.config, "max_position_embeddings", 4096))
    dropped = 0
    while len(prompt_ids(model.tokenizer, question, model.prompt_format, history)) + max_new_tokens > limit:
        if not history:
            raise MullamaError(f"the question and --max-new-tokens {max_new_tokens} do not fit the model's {limit} "
                               "positions; ask a shorter question or allow fewer new tokens")
        history.pop(0)
        dropped += 1
    return dropped


def run_ask(config: AskConfig, write: Callable[[str], None] | None = None,
            read: Callable[[str], str] | None = None) -> AskReport:
    """Answer config.question (and, with --chat, each follow-up `read` returns) streaming pieces to `write`."""
    write = write or _write_stdout
    read = read or input
    manifest = read_manifest(config.adapter)
    stack, identity = ask_inputs(config, manifest)
    knn = knn_mix(config)
    model = MusicLlama.load(config.adapter, config.llama, dtype=config.dtype, device=config.device, encoder=identity)
    settings = {"temperature": config.temperature, "top_p": config.top_p, "max_new_tokens": config.max_new_tokens,
                "seed": None if config.seed < 0 else config.seed}
    report = AskReport()
    history: list[Turn] = []
    question = config.question
    while True:
        report.dropped_turns += fit_history(model, question, history, config.max_new_tokens)
        pieces = []
        for piece in model.stream(stack, question, knn, history, **settings):
            write(piece)
            pieces.append(piece)
        write("\n")
        answer = "".join(pieces).strip()
        history.append((question, answer))
        report.turns.append((question, answer))
        if not config.chat:
            return report
        try:
            question = read("> ").strip()
        except EOFError:
            return report
        if not question:
            return report


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
