"""What an extraction did: per-clip outcomes (the typed record that crosses the Ray boundary) and the
run's summary, which formats itself for the CLI and the demo."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from mullama.formatting import human_bytes
from mullama.store import ClipRecord, ClipResult
from mullama.store.schema import STATUS_OK

SHOWN_FAILURES = 20


@dataclass(frozen=True)
class ClipOutcome:
    """One clip's result without its arrays: small enough to send from an actor to the driver."""

    clip_id: str
    ok: bool
    reason: str = ""
    windows: int = 0
    duration: float = 0.0

    @classmethod
    def of_result(cls, result: ClipResult) -> "ClipOutcome":
        windows = 0 if result.window_stacks is None else int(result.window_stacks.shape[0])
        return cls(result.clip_id, result.ok, result.reason, windows, result.duration)

    @classmethod
    def of_record(cls, record: ClipRecord) -> "ClipOutcome":
        return cls(record.clip_id, record.status == STATUS_OK, record.reason, record.windows, record.duration)


@dataclass
class PartitionReport:
    """What writing one partition produced."""

    partition_id: str
    outcomes: list[ClipOutcome]
    actor: str = ""


@dataclass
class ExtractSummary:
    store: str
    inputs: int
    skipped: int = 0
    changed: int = 0  # committed clips whose source changed: extracted again, their new rows supersede the old
    processed: int = 0
    ok: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    windows: int = 0
    audio_seconds: float = 0.0
    seconds: float = 0.0
    partitions: int = 0
    store_bytes: int = 0
    modality: str = "audio"  # of the store's encoder: clips of audio, or images, or videos

    @property
    def exit_code(self) -> int:
        """1 when some clips failed (they are recorded; the rest of the batch is committed)."""
        return 1 if self.failures else 0

    @property
    def clips_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def failure_reasons(self) -> dict[str, int]:
        return dict(collections.Counter(reason.split(":", 1)[0] for _, reason in self.failures))

    def record(self, outcome: ClipOutcome) -> None:
        self.processed += 1
        if outcome.ok:
            self.ok += 1
            self.windows += outcome.windows
            self.audio_seconds += outcome.duration
        else:
            self.failures.append((outcome.clip_id, outcome.reason))

    def _amount(self) -> str:
        if self.modality == "audio":
            return f"windows: {self.windows}, audio: {self.audio_seconds / 60:.1f} min, "
        minutes = f" ({self.audio_seconds / 60:.1f} min)" if self.modality == "video" else ""
        return f"{self.modality}s: {self.ok}{minutes}, "

    def lines(self) -> list[str]:
        lines = [
            f"store: {self.store}",
            f"clips: {self.inputs} in input, {self.skipped} already committed, {self.processed} processed "
            f"({self.ok} ok, {len(self.failures)} failed)",
            self._amount() + f"time: {self.seconds:.1f} s, rate: {self.clips_per_second:.2f} "
            + ("clips" if self.modality == "audio" else f"{self.modality}s") + "/s",
            f"store size: {human_bytes(self.store_bytes)} in {self.partitions} partitions",
        ]
        if self.changed:
            lines.append(f"{self.changed} committed clip(s) had a changed source (same clip id, other content): "
                         "extracted again; their new rows supersede the old ones")
        if self.failures:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.failure_reasons().items()))
            lines.append(f"failed clips ({reasons}):")
            lines += [f"  {clip_id}: {reason}" for clip_id, reason in self.failures[:SHOWN_FAILURES]]
            if len(self.failures) > SHOWN_FAILURES:
                lines.append(f"  ... {len(self.failures) - SHOWN_FAILURES} more (see `mullama store info --failures`)")
        return lines
