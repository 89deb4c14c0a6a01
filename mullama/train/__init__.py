"""Stage 2 training: the adapter learns from cached layer stacks in WebDataset shards, never from audio."""
