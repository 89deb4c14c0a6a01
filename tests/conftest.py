"""Shared fixtures (tiny random MERT and LLaMA folders, small synthetic audio collections) and the suite's
layout over pytest-xdist workers (`pytest -n auto`): a share of the cores each, Ray tests on one worker,
the longest tests first."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits
from xdist.scheduler import LoadScopeScheduling

from tests.helpers import write_tone

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def share_the_cores_between_workers() -> None:
    """Each xdist worker (and the processes its tests start) gets cores / workers threads: torch, faiss and BLAS
    in two processes that each use every core slow each other far more than 2x. The environment reaches torch
    and faiss (imported later) and subprocesses; numpy's BLAS is already loaded, so it is limited in place."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, str(threads))
        threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))


share_the_cores_between_workers()

# Tests that run on one worker, one after another: the Ray tests (two local Ray clusters at once take ~0.8 GB each
# and fight over the same cores) and the modules whose module-scoped fixture is costly (a rendered corpus, a
# running server), which would otherwise be built once per worker. (xdist's `xdist_group` mark cannot say this:
# on pytest 9.2 it silently stops grouping, pytest-dev/pytest-xdist#1386.)
SHARED_UNITS = {"ray": ("tests/test_ray_extract.py::", "tests/test_train.py::test_ray_train_launcher"),
                "demo corpus": ("tests/test_demo_corpus.py::",), "server": ("tests/test_server.py::",)}

# The longest units, longest first (measured with --durations=0), start first, so that a run does not end
# waiting for one of them started last.
HEAVY_FIRST = ("tests/test_demo.py::", "tests/test_generation.py::test_train_generate_and_edit_from_the_command_line",
               "ray", "tests/test_knn_audio.py::test_extract_keeps_the_index_current",
               "tests/test_extract.py::test_kill_minus_nine", "demo corpus",
               "tests/test_generation.py::test_generate_through_audioldm2",
               "tests/test_model_cli.py::test_import_command", "tests/test_generation.py::test_generation_demo_steps",
               "server")


def scheduling_unit(nodeid: str) -> str:
    """What a worker takes at once: every test of a shared unit, or one test."""
    return next((name for name, tests in SHARED_UNITS.items() if nodeid.startswith(tests)), nodeid)


def start_rank(nodeid: str) -> int:
    unit = scheduling_unit(nodeid)
    return next((rank for rank, heavy in enumerate(HEAVY_FIRST) if unit.startswith(heavy)), len(HEAVY_FIRST))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the heavy tests first (every worker sorts alike); a serial run keeps the files' order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: start_rank(item.nodeid))


class SharedResourceScheduling(LoadScopeScheduling):
    """xdist's load balancing over scheduling units, handed out in collection order (the heaviest first)."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # xdist would put the largest units first, not the longest

    def _split_scope(self, nodeid: str) -> str:
        return scheduling_unit(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> LoadScopeScheduling | None:
    """`-n` without `--dist` (xdist's `load`) schedules as above; an explicit `--dist` is obeyed."""
    return SharedResourceScheduling(config, log) if config.getoption("dist") == "load" else None


@pytest.fixture(scope="session")
def tiny_mert(tmp_path_factory) -> Path:
    from mullama.fixtures.mert import write_random_mert

    return write_random_mert(tmp_path_factory.mktemp("mert") / "tiny", "tiny", seed=0)


@pytest.fixture
def audio_folder(tmp_path) -> Path:
    """Eight clips of distinct lengths, rates, channels and formats (WAV and FLAC)."""
    folder = tmp_path / "audio"
    specs = [(1.3, 44100, 1, "wav"), (2.0, 22050, 2, "flac"), (0.7, 48000, 1, "wav"), (3.1, 16000, 2, "wav"),
             (1.9, 24000, 1, "flac"), (2.6, 32000, 1, "wav"), (4.4, 44100, 2, "flac"), (0.9, 24000, 1, "wav")]
    for number, (seconds, rate, channels, extension) in enumerate(specs):
        write_tone(folder / f"set{number % 2}" / f"clip{number}.{extension}", seconds, rate,
                   110.0 * (number + 1), channels, seed=number)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A random-weight 4-layer LLaMA (64 wide, 4 heads) with a real SentencePiece tokenizer."""
    from mullama.fixtures.llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_gqa_llama(tmp_path_factory) -> Path:
    """The tiny LLaMA with grouped-query attention: 4 query heads over 2 key/value heads."""
    from mullama.fixtures.llama import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("llama") / "tiny-gqa", "tiny", seed=1, kv_heads=2)
