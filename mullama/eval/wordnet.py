"""WordNet for METEOR: no pip package ships it, so it is copied from Debian's `wordnet-base` and
`wordnet-sense-index` packages into an NLTK data folder (docs/evaluation.md).

NLTK's reader also wants `lexnames`, the list of WordNet's 45 lexicographer files, which Debian ships
only as a man page; it is written here from the WordNet 3.0 documentation (number, name, part of speech).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import nltk
from nltk.corpus import wordnet

from mullama.errors import MullamaError

DEBIAN_WORDNET = Path("/usr/share/wordnet")
# Files NLTK's WordNet reader opens (index.sense comes from wordnet-sense-index).
REQUIRED_FILES = ("data.noun", "data.verb", "data.adj", "data.adv", "index.noun", "index.verb", "index.adj",
                  "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc", "index.sense")
POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
LEXICOGRAPHER_FILES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition "
    "noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object "
    "noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication verb.competition "
    "verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()
INSTALL_HINT = ("install it with scripts/install.sh, or: apt-get install wordnet-base wordnet-sense-index && "
                "mullama eval install-wordnet")


def default_data_folder() -> Path:
    """`<environment>/share/nltk_data`: one of the folders NLTK searches without any setting."""
    return Path(sys.prefix) / "share" / "nltk_data"


def lexnames_text() -> str:
    return "".join(f"{number:02d}\t{name}\t{POS_NUMBER[name.split('.')[0]]}\n"
                   for number, name in enumerate(LEXICOGRAPHER_FILES))


@dataclass
class WordnetInstall:
    folder: Path
    files: int
    exit_code: int = 0

    def lines(self) -> list[str]:
        return [f"installed WordNet ({self.files} files and lexnames) in {self.folder}",
                "NLTK finds it there without NLTK_DATA" if self.folder.parent.parent == default_data_folder()
                else f"set NLTK_DATA={self.folder.parent.parent} so that NLTK finds it"]


def install_wordnet(source: str | Path = DEBIAN_WORDNET, data_folder: str | Path = "") -> WordnetInstall:
    """Copy WordNet's database files into DATA/corpora/wordnet (a complete copy replaces an older one)."""
    source = Path(source)
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise MullamaError(f"{source} lacks WordNet's {', '.join(missing[:3])}; apt-get install wordnet-base "
                           "wordnet-sense-index, or give --source a folder holding the WordNet 3.0 database")
    target = Path(data_folder or default_data_folder()) / "corpora" / "wordnet"
    staging = target.with_name("wordnet.partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        files = [p for p in source.iterdir() if p.is_file()]
        for path in files:
            shutil.copyfile(path, staging / path.name)
        (staging / "lexnames").write_text(lexnames_text())
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # a reader never sees a half-copied corpus
    except OSError as exc:
        raise MullamaError(f"cannot write WordNet into {target.parent}: {exc.strerror or exc}") from None
    return WordnetInstall(target, len(files))


def require_wordnet() -> None:
    """Load WordNet now, so that a missing corpus is one clear line before any scoring starts."""
    try:
        wordnet.ensure_loaded()
    except LookupError:
        raise MullamaError("METEOR needs the WordNet corpus, which NLTK did not find in "
                           f"{', '.join(nltk.data.path[:3])}...; {INSTALL_HINT}") from None
