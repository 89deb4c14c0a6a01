"""Stage 1: decode audio, run the frozen encoder once, and write layer stacks to the feature store.

Kept free of heavy imports so that decoding worker processes start fast.
"""
