"""`mullama demo`: the main job end to end on the built-in corpus, on this machine, no cluster.

Every step is skipped when its output already exists, so re-running the demo is cheap and a
killed demo continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from mullama.extract.runner import ExtractSummary

from mullama.config import option
from mullama.data.demo import DemoConfig, build_demo_corpus
from mullama.extract.config import ExtractConfig
from mullama.formatting import human_bytes


@dataclass
class DemoRunConfig:
    out: str = option("demo-run", help="Folder for everything the demo writes")
    clips: int = option(48, help="Clips in the demo corpus")
    seed: int = option(0, help="Seed for the corpus and the random weights")
    mert_size: str = option("tiny", help="Random MERT shapes: tiny, 95m or 330m")
    workers: int = option(1, help="Decoding processes")
    batch_size: int = option(8, help="Windows per encoder call")
    device: str = option("auto", help="auto, cpu or cuda")
    progress: bool = option(True, help="Show progress bars")


@dataclass
class DemoReport:
    corpus: Path
    mert: Path
    store: Path
    extraction: "ExtractSummary"
    failures: list[tuple[str, str]] = field(default_factory=list)


def run_demo(config: DemoRunConfig, echo: Callable[[str], None] = print) -> DemoReport:
    from mullama.extract.init_mert import write_random_mert
    from mullama.extract.runner import run_local
    from mullama.store import FeatureStore

    out = Path(config.out)
    corpus_dir, mert_dir, store_dir = out / "corpus", out / f"mert-{config.mert_size}", out / "store"
    manifest = corpus_dir / "manifest.csv"
    if manifest.is_file():
        echo(f"[1/3] demo corpus: reusing {corpus_dir}")
    else:
        echo(f"[1/3] demo corpus: rendering {config.clips} clips with FluidSynth into {corpus_dir}")
        build_demo_corpus(DemoConfig(out=str(corpus_dir), clips=config.clips, seed=config.seed))
    if (mert_dir / "config.json").is_file():
        echo(f"[2/3] encoder: reusing random-weight MERT-{config.mert_size} in {mert_dir}")
    else:
        echo(f"[2/3] encoder: writing random-weight MERT-{config.mert_size} to {mert_dir}")
        write_random_mert(mert_dir, config.mert_size, config.seed)
    echo(f"[3/3] extract: {manifest} -> {store_dir}")
    summary = run_local(ExtractConfig(input=str(manifest), mert=str(mert_dir), store=str(store_dir),
                                      workers=config.workers, batch_size=config.batch_size, device=config.device,
                                      progress=config.progress))
    echo("")
    echo("demo summary")
    echo(f"  clips: {len(FeatureStore.open(str(store_dir)))} in the store "
         f"({summary.processed} extracted now, {summary.skipped} already there), {len(summary.failures)} failed")
    echo(f"  windows: {summary.windows} extracted now ({summary.audio_seconds / 60:.1f} min of audio)")
    echo(f"  rate: {summary.clips_per_second:.2f} clips/s over {summary.seconds:.1f} s")
    echo(f"  store: {store_dir} ({human_bytes(summary.store_bytes)} in {summary.partitions} partitions)")
    echo(f"  corpus: {corpus_dir} (manifest.csv, qa_train.json, qa_eval.json)")
    echo(f"  encoder: {mert_dir}")
    echo(f"  next: `mullama store info {store_dir}` and `mullama store verify {store_dir}`")
    return DemoReport(corpus_dir, mert_dir, store_dir, summary, summary.failures)
