"""Data formats: clip manifests and MusicQA files."""
