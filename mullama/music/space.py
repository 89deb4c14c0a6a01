"""Which text encoder's output space conditioning rows live in: the identity that the training targets, the
generator's projector and the music decoder must share (docs/generation.md, "The conditioning space is an
identity")."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.errors import MullamaError
from mullama.records import Record


@dataclass(frozen=True)
class ConditioningSpace(Record):
    """A text encoder's output space: its width, and hashes of its config, tokenizer and first weight rows."""

    width: int
    config_hash: str
    tokenizer_hash: str
    weights_fingerprint: str

    def check(self, given: "ConditioningSpace", what: str) -> None:
        if self.width != given.width:
            raise MullamaError(f"{what} has conditioning {given.width} wide, this was trained for {self.width}: "
                               "use the music decoder folder whose text encoder made the training targets")
        if self != given:
            raise MullamaError(f"{what} has another text encoder (config, tokenizer or weights differ) than the one "
                               "that made the training targets: use that music decoder folder, or compute the "
                               "targets again with this one")
