"""A decoder for reader tests that kills its worker process on chosen clips, as a decoder bug would."""

import os

from mullama.extract.reader import DecodedClip, decode_clip


def decode_or_crash(source, settings) -> DecodedClip:
    if "crash" in source.clip_id:
        os._exit(3)
    return decode_clip(source, settings)
