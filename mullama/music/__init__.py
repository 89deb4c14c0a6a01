"""Music generation (MuMu-LLaMA's output side, docs/generation.md): the conditioning space, the frozen music
decoders and their registry by kind, the generator's output head, the training targets and pairs, and the one
compose path from a request to audio that `mullama generate`, `mullama edit`, the server and the demo share.

It sits between training (which trains the generator) and the model (whose frozen LLaMA and adapter the generator
reads through)."""
