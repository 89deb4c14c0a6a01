"""Using a trained adapter: ask about one track (streamed, multi-turn) and caption whole collections."""
