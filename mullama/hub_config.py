"""Configs of `mullama models fetch` and `mullama models info` (light: huggingface_hub is imported when they run)."""

from __future__ import annotations

from dataclasses import dataclass

from mullama.config import files_given, option, path_given


@dataclass
class ModelsFetchConfig:
    ids: list[str] = option([], help="Hugging Face Hub ids, ORG/NAME or ORG/NAME@REVISION", argument=True,
                            check=files_given)
    revision: str = option("", help="Branch, tag or commit for every id without its own @REVISION (default: main)")
    to: str = option("", help="Download into this folder (one id) or FOLDER/ORG--NAME (several) instead of the "
                              "Hugging Face cache")
    progress: bool = option(True, help="Show a progress bar")


@dataclass
class ModelsInfoConfig:
    model: str = option(help="A model folder or a Hugging Face Hub id (ORG/NAME[@REVISION])", argument=True,
                        check=path_given)
