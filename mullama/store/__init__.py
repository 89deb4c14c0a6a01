"""Zarr feature store of encoder layer stacks, written in committed partitions."""

from mullama.store.feature_store import SILENCE_CLIP, FeatureStore
from mullama.store.partition import ClipResult
from mullama.store.schema import ClipRecord, StoreSettings

__all__ = ["SILENCE_CLIP", "ClipRecord", "ClipResult", "FeatureStore", "StoreSettings"]
