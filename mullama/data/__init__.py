"""Data formats (manifests, MusicQA files) and the built-in demo corpus."""
