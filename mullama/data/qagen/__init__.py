"""QA generation: MusicQA-style training data from captions and tags (docs/data-formats.md)."""
