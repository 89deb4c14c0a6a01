"""Configs of the store commands (kept free of heavy imports so that `--help` is instant)."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import at_least, either, greater_than, one_of, option, path_given

# How a stored clip is answered (mullama/store/stacks.py): windows 0, 2, 4... as the paper, or the whole-clip stack.
PROTOCOLS = ("paper", "clip")


@dataclass
class ExportShardsConfig:
    store: str = option(help="Feature store path or URL", argument=True, check=path_given)
    out: str = option(help="Folder for the shards and shards.json", check=path_given)
    qa: list[str] = option([], help="MusicQA JSON file(s) whose audio_name values are the store's clip ids")
    text_only: list[str] = option([], help="Alpaca-style JSON file(s) (instruction, input, output): text items "
                                           "trained with the stack of 1 s of silence")
    shard_mb: float = option(500.0, help="Target shard size in MB", check=greater_than(0))
    seed: int = option(0, help="Seed of the sample order (the same seed gives the same shards)", check=at_least(0))
    windows: bool = option(False, help="Also store each clip's per-window stacks")
    overwrite: bool = option(False, help="Replace an existing export in OUT (once the new one is complete)")
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class StoreInfoConfig:
    store: str = option(help="Feature store path or URL", argument=True, check=path_given)
    json: bool = option(False, help="Print machine-readable JSON")
    failures: bool = option(False, help="List every failed clip with its reason")


@dataclass
class StoreVerifyConfig:
    store: str = option(help="Feature store path or URL", argument=True, check=path_given)


@dataclass
class StoreGcConfig:
    store: str = option(help="Feature store path or URL", argument=True, check=path_given)
    min_age: float = option(-1.0, help="Keep an uncommitted partition any of whose files is younger than this "
                                       "many seconds, a guard for writers whose lease cannot be read (-1: the lease "
                                       "length, 120 s or MULLAMA_LEASE_SECONDS)",
                            check=either(one_of(-1.0), at_least(0)))
