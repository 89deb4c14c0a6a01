"""QA pairs from structured tags without any LLM (`--llm template`): for tag datasets and the demo corpus.

Tags are sorted into tempo, mood, instrument and genre by a small lexicon (MagnaTagATune's common tags and
the demo corpus's fields); the answers are sentences built from them, so they state only what the tags say.
"""

from __future__ import annotations

from mullama.data.qagen.instructions import DESCRIPTION_QUESTIONS, Pair
from mullama.data.qagen.sources import SourceClip

LEXICON = {
    "tempo": {"fast", "slow", "moderate", "quick", "upbeat", "fast beat", "slow beat", "no beat"},
    "mood": {"calm", "quiet", "loud", "soft", "sad", "happy", "dark", "eerie", "spooky", "weird", "strange",
             "soothing", "mellow", "heavy", "light", "energetic", "relaxing", "dramatic", "peaceful", "ambient"},
    "instrument": {"guitar", "piano", "violin", "drums", "synth", "strings", "flute", "harpsichord", "sitar",
                   "cello", "harp", "bass", "trumpet", "organ", "church organ", "vocals", "vocal", "voice",
                   "female vocal", "male vocal", "choir", "electric guitar", "acoustic guitar", "percussion",
                   "beat", "beats", "banjo", "fiddle", "saxophone", "clarinet", "horns", "oboe"},
    "genre": {"classical", "rock", "pop", "techno", "electronic", "jazz", "blues", "country", "folk", "metal",
              "opera", "indian", "hip hop", "rap", "reggae", "dance", "new age", "baroque", "medieval", "irish",
              "celtic", "world", "punk", "disco", "house", "trance", "orchestral"},
}


def _sorted_tags(clip: SourceClip) -> dict[str, list[str]]:
    if clip.fields:  # the demo corpus: its fields are the categories
        fields = clip.fields
        return {"tempo": [fields["tempo"]] if "tempo" in fields else [],
                "mood": [], "instrument": [fields["instrument"]] if "instrument" in fields else [],
                "genre": [fields["style"]] if "style" in fields else []}
    found: dict[str, list[str]] = {name: [] for name in LEXICON}
    for tag in clip.tags:
        for name, words in LEXICON.items():
            if tag.lower() in words:
                found[name].append(tag.lower())
    return found


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" and {words[-1]}"


def template_pairs(clip: SourceClip) -> tuple[list[Pair], list[Pair]]:
    """(the four description answers, five open pairs) for one clip."""
    tags = _sorted_tags(clip)
    fields = clip.fields
    instrument = _join(tags["instrument"]) if tags["instrument"] else "instruments the tags do not name"
    genre = _join(tags["genre"]) if tags["genre"] else "a style the tags do not name"
    tempo = tags["tempo"][0] if tags["tempo"] else "unstated"
    mood = _join(tags["mood"]) if tags["mood"] else ""
    summary = f"A {tempo + ' ' if tags['tempo'] else ''}{genre} piece played on {instrument}"
    details = [f"in {fields['key']}" if "key" in fields else "", f"in {fields['meter']} time" if "meter" in fields
               else "", f"by {fields['composer']}" if "composer" in fields else ""]
    detail = ", ".join(d for d in details if d)
    everything = _join(clip.tags) if clip.tags else "nothing the tags describe"
    description = [
        f"{summary}.",
        f"{summary}{', ' + detail if detail else ''}.{' Its mood is ' + mood + '.' if mood else ''}",
        f"I hear {instrument}.{' The music sounds ' + mood + '.' if mood else ''}",
        f"It is likely {genre} music; its tags are {everything}.",
    ]
    opened = [
        ("What is the tempo of this music?", f"The tempo is {tempo}." if tags["tempo"] else
         "The tags do not state the tempo."),
        ("What mood does this music convey?", f"It conveys a {mood} mood." if mood else
         "The tags do not state a mood."),
        ("Which instruments can be heard in this music?", f"{instrument[0].upper()}{instrument[1:]}."),
        ("What genre is this music?", f"It is {genre} music."),
        ("What can be inferred from this music?", f"It is probably a {genre} piece featuring {instrument}"
         f"{', ' + detail if detail else ''}."),
    ]
    return list(zip(DESCRIPTION_QUESTIONS, description)), opened
