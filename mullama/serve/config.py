"""Configs of `mullama ask`, `caption`, `serve`, `generate` and `edit`, and the defaults of a served chat request
(light: no torch import, so `--help` is instant)."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import (
    at_least,
    between,
    device_name,
    either,
    greater_than,
    non_empty,
    one_of,
    option,
    path_given,
    probability_mass,
    simple_name,
)
from mullama.store.config import PROTOCOLS

DTYPES = one_of("auto", "fp32", "bf16", "fp16")
MU_LLAMA_TEMPERATURE = 0.6  # MU-LLaMA's sampling defaults (its demo and evaluation), not OpenAI's
MU_LLAMA_TOP_P = 0.8
ANSWER_TOKENS = 512  # the longest answer `mullama ask` writes unless told otherwise
MUSIC_SECONDS = 10.0  # the length of music `mullama generate` makes unless told otherwise
# A temperature this small divides logits past float32's range (softmax of inf: NaN, and a failed sampling step;
# on CUDA a device assert that breaks every later request): the server serves it as what it means, greedy decoding.
MIN_TEMPERATURE = 1e-3
# Sampling seeds reach torch.manual_seed and torch.Generator, which overflow past 64 bits with a traceback; a 32-bit
# range (what numpy's RandomState takes) is ample, and -1 asks for a fresh seed each time.
SEEDS = between(-1, 2 ** 32)


@dataclass
class AskConfig:
    question: str = option(help="The question about the track", argument=True, check=non_empty)
    adapter: str = option(help="Trained adapter folder", check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on (Hugging Face layout)", check=path_given)
    store: str = option("", help="Feature store holding --clip")
    clip: str = option("", help="A stored clip id (its whole-clip stack is used)")
    audio: str = option("", help="An audio file instead of a stored clip (encoded with --mert, as extraction would)")
    mert: str = option("", help="MERT folder for --audio: the encoder the adapter was trained with")
    image: str = option("", help="An image to ask about (a multi-modal adapter; with or without the track)")
    vit: str = option("", help="ViT folder for --image: the encoder the adapter's image branch was trained with")
    video: str = option("", help="A video to ask about (a multi-modal adapter; with or without the track)")
    vivit: str = option("", help="ViViT folder for --video: the encoder the adapter's video branch was trained with")
    chat: bool = option(False, help="Keep asking: read follow-up questions from the terminal, answered with the "
                                    "conversation so far (an empty line or end of input stops)")
    knn: str = option("", help="kNN index (a name in --store, or an index folder) built with --recipe adapter:ADAPTER: "
                               "the music feature is mixed with its neighbours")
    knn_weight: float = option(0.2, help="Share of the neighbours in the mixed feature (the paper's evaluation: 0.2)",
                               check=at_least(0))
    temperature: float = option(MU_LLAMA_TEMPERATURE, help="Sampling temperature (0: greedy)", check=at_least(0))
    top_p: float = option(MU_LLAMA_TOP_P, help="Nucleus sampling mass", check=probability_mass)
    max_new_tokens: int = option(ANSWER_TOKENS, help="Longest answer in tokens", check=at_least(1))
    seed: int = option(-1, help="Sampling seed (-1: a fresh one each time)", check=SEEDS)
    dtype: str = option("auto", help="LLM dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16", check=DTYPES)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)


@dataclass
class CaptionConfig:
    store: str = option(help="Feature store of the collection (no audio is read)", check=path_given)
    adapter: str = option(help="Trained adapter folder", check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on", check=path_given)
    out: str = option(help="Captions file to write, a path or s3://bucket/key (JSON lines; parts are kept beside "
                           "it until it is complete)", check=path_given)
    question: str = option("Describe the audio in detail", help="The question every clip is asked",
                           check=non_empty)
    clips: str = option("", help="A text file (or s3:// object) of clip ids to caption, one per line (default: "
                                 "every stored clip)")
    protocol: str = option("clip", help="clip: one caption from the whole-clip stack; paper: a caption per window "
                                        "0, 2, 4... joined, as the published evaluation", check=one_of(*PROTOCOLS))
    temperature: float = option(MU_LLAMA_TEMPERATURE, help="Sampling temperature (0: greedy)", check=at_least(0))
    top_p: float = option(MU_LLAMA_TOP_P, help="Nucleus sampling mass", check=probability_mass)
    max_new_tokens: int = option(ANSWER_TOKENS, help="Longest caption in tokens", check=at_least(1))
    batch_size: int = option(16, help="Captions generated together", check=at_least(1))
    partition_size: int = option(256, help="Clips per unit of work: one part file each, the unit a resumed or "
                                           "Ray run skips or retries", check=at_least(1))
    seed: int = option(0, help="Sampling seed (each partition draws from its own seed, so runs are identical "
                                "however the work is spread)", check=at_least(0))
    dtype: str = option("auto", help="LLM dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16", check=DTYPES)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)
    ray: str = option("", help="Caption on a Ray cluster: 'local', 'auto' or a cluster address")
    ray_actors: int = option(0, help="Ray: model replicas (0: one per GPU, or 2 on a CPU-only cluster)",
                             check=at_least(0))
    ray_gpus_per_actor: float = option(1.0, help="Ray: GPUs per replica (fractions share a GPU) when the cluster "
                                                 "has GPUs", check=greater_than(0))
    ray_cpus_per_actor: float = option(1.0, help="Ray: CPUs per replica", check=greater_than(0))
    overwrite: bool = option(False, help="Caption again from scratch instead of resuming")
    index: str = option("", help="Then add the captions to this text index of the store (built the first time, "
                                 "with the default text model), as `mullama index build --update --captions OUT`",
                        check=either(one_of(""), simple_name))
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class ServeConfig:
    adapter: str = option(help="Trained adapter folder", check=path_given)
    llama: str = option(help="The LLaMA folder the adapter was trained on (Hugging Face layout)", check=path_given)
    store: str = option("", help="Feature store: requests may name a stored clip (clip_id) instead of uploading audio")
    mert: str = option("", help="MERT folder the adapter was trained with: lets requests upload audio")
    index: str = option("", help="kNN index for /v1/similar (a name in --store, or an index folder)")
    text_index: str = option("", help="Text index for /v1/search and the page's word search (a name in --store, or "
                                      "an index folder) built with `mullama index build --captions`")
    audio_root: str = option("", help="Folder holding the stored clips' audio files: the web page plays a stored clip, "
                                      "and a Melody generator follows it in an edit, only when its source lies under "
                                      "this folder")
    host: str = option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)",
                       check=non_empty)
    port: int = option(8000, help="TCP port (0: any free port, printed at start)", check=between(0, 65536))
    api_key: str = option("", help="Require 'Authorization: Bearer KEY' on /v1 and /metrics (default: the "
                                   "MULLAMA_API_KEY environment variable; empty: no key)")
    model_name: str = option("", help="The model id clients send (default: the adapter folder's name)")
    max_batch_size: int = option(8, help="Requests generated together in one batch", check=at_least(1))
    batch_wait_ms: float = option(40.0, help="Under load, how long the first request of a batch waits for others "
                                             "to join (on 2 CPU cores, 40 ms filled batches of 8 clients to 7.4 on "
                                             "average, 10 ms to 5.4; an idle server starts at once)",
                                  check=at_least(0))
    max_pending: int = option(256, help="Requests admitted at once (queued or generating); more get 429",
                              check=at_least(1))
    max_tokens: int = option(1024, help="Largest max_tokens a request may ask for", check=at_least(1))
    max_history: int = option(16, help="Most earlier turns (question + answer pairs) a request may carry",
                              check=at_least(0))
    max_body_mb: float = option(64.0, help="Largest request body in MB (base64 audio included)", check=greater_than(0))
    body_timeout_s: float = option(60.0, help="Seconds a client may take to send its whole request body; slower "
                                              "ones get 408 (a stalled client holds a connection and its buffer; 60 s "
                                              "carries the largest body over about 10 Mbit/s)", check=greater_than(0))
    max_audio_seconds: float = option(600.0, help="Longest uploaded audio in seconds", check=greater_than(0))
    generator: str = option("", help="Generator folder (`mullama generator train`, trained through --adapter): chat "
                                     "requests with modalities [\"audio\"] get music back as message.audio")
    musicgen: str = option("", help="MusicGen or AudioLDM2 folder for --generator (default: the one it was trained "
                                    "for; a Melody model also follows the recording: an upload, or a stored clip's "
                                    "file under --audio-root)")
    music_steps: int = option(200, help="AudioLDM2's denoising steps per music request (MusicGen ignores it)",
                              check=at_least(1))
    max_music_seconds: float = option(30.0, help="Longest music a request may ask for (extra_body 'seconds'; at most "
                                                 "what the music decoder makes, which the server says at start)",
                                      check=greater_than(0))
    threads: int = option(0, help="CPU threads for the model when it runs on the CPU (0: every core but one, which "
                                  "is left to the HTTP server: BENCHMARKS.md measures why)", check=at_least(0))
    dtype: str = option("auto", help="LLM dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16", check=DTYPES)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)


@dataclass(frozen=True)
class ChatDefaults:
    """What a chat request to `mullama serve` gets for a field it leaves out, and the most it may ask for: one
    object, built from the server's options, so that no route or service writes a default of its own."""

    temperature: float
    top_p: float
    min_temperature: float  # below it, greedy
    max_tokens: int  # when the request names none
    max_tokens_limit: int
    max_history: int
    max_pending: int
    music_seconds: float  # when the request names none (the music service keeps it within its decoder's range)

    @classmethod
    def of(cls, config: ServeConfig) -> ChatDefaults:
        return cls(temperature=MU_LLAMA_TEMPERATURE, top_p=MU_LLAMA_TOP_P, min_temperature=MIN_TEMPERATURE,
                   max_tokens=min(ANSWER_TOKENS, config.max_tokens), max_tokens_limit=config.max_tokens,
                   max_history=config.max_history, max_pending=config.max_pending,
                   music_seconds=min(MUSIC_SECONDS, config.max_music_seconds))


AUDIO_SUFFIXES = (".wav", ".flac")


def audio_out(value: str) -> str | None:
    """An output audio path whose suffix says the format (WAV or FLAC)."""
    if not value.strip():
        return "must name a file, not be empty"
    return None if value.lower().endswith(AUDIO_SUFFIXES) else "must end in .wav or .flac (the format to write)"


@dataclass(kw_only=True)
class SoundOptions:
    """What `mullama generate` and `mullama edit` share: where the models are, how to sample, where to write."""

    generator: str = option(help="Generator folder from `mullama generator train`", check=path_given)
    out: str = option(help="Audio file to write: .wav or .flac", check=audio_out)
    adapter: str = option("", help="Adapter folder (default: the one the generator was trained through)")
    llama: str = option("", help="LLaMA folder (default: the one the generator was trained on)")
    musicgen: str = option("", help="MusicGen or AudioLDM2 folder (default: the one the generator was trained for)")
    steps: int = option(200, help="AudioLDM2's denoising steps (its default 200; MusicGen samples codes instead)",
                        check=at_least(1))
    seconds: float = option(MUSIC_SECONDS, help="Length of the music in seconds", check=greater_than(0))
    guidance: float = option(3.0, help="Classifier-free guidance scale (MusicGen's default 3, AudioLDM2's 3.5; 1 "
                                       "or less: none)",
                             check=at_least(0))
    top_k: int = option(250, help="MusicGen: sample each code from the k likeliest (its default 250)",
                        check=at_least(1))
    temperature: float = option(1.0, help="MusicGen: sampling temperature (0: greedy)", check=at_least(0))
    seed: int = option(0, help="Sampling seed (-1: a fresh one each time)", check=SEEDS)
    overwrite: bool = option(False, help="Replace --out if it exists")
    dtype: str = option("auto", help="LLM dtype: auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16", check=DTYPES)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N", check=device_name)


@dataclass(kw_only=True)
class GenerateConfig(SoundOptions):
    request: str = option(help="What to generate, in words (e.g. 'a calm piano piece in C major')", argument=True,
                          check=non_empty)


@dataclass(kw_only=True)
class EditConfig(SoundOptions):
    input: str = option(help="The recording to edit (any format extraction reads)", argument=True, check=path_given)
    request: str = option(help="How to change it, in words (e.g. 'play this on a violin')", argument=True,
                          check=non_empty)
    mert: str = option(help="MERT folder the adapter was trained with: the recording reaches the LLaMA as its "
                            "layer stack, computed as extraction would", check=path_given)
    musicgen: str = option("", help="MusicGen-Melody folder: the output follows the recording's melody "
                                    "(default: the generator's, if it is a Melody model)")
