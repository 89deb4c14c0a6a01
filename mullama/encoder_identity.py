"""What produced a set of feature stacks: the contract between encoders, the store, adapters and indexes.

Every downstream artefact (store, shards, adapter, index) records the identity of the encoder whose
stacks it holds or was trained on, and refuses to mix two. `modality` and `kind` tell encoders of
other inputs apart (image and video encoders join as new kinds); records written before these
fields existed were all MERT audio stacks, which is what their defaults say.
"""

from __future__ import annotations

from dataclasses import dataclass

from mullama.records import Record

AUDIO = "audio"
IMAGE = "image"
VIDEO = "video"
MERT = "mert"
VIT = "vit"
VIVIT = "vivit"


@dataclass(frozen=True)
class EncoderIdentity(Record):
    """Name, hashes and stack shape of one encoder checkpoint; the display name never decides equality."""

    name: str
    config_hash: str
    weights_hash: str
    sample_rate: int
    hidden_states: int
    hidden_size: int
    modality: str = AUDIO
    kind: str = MERT
    hub_id: str = ""  # the Hugging Face Hub repo the weights came from ("" : a local folder), for provenance only
    hub_commit: str = ""

    @property
    def stack_shape(self) -> tuple[int, int]:
        """(hidden states, hidden size): (L+1, H) for a transformer encoder of L layers."""
        return (self.hidden_states, self.hidden_size)

    def same_encoder(self, other: "EncoderIdentity") -> bool:
        """Same computation: the display name may differ, hashes, shapes and kind may not."""
        return (self.modality, self.kind, self.config_hash, self.weights_hash, self.sample_rate,
                self.stack_shape) == (other.modality, other.kind, other.config_hash, other.weights_hash,
                                      other.sample_rate, other.stack_shape)
