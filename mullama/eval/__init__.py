"""Evaluation from stored stacks: listening controls and (later) text metrics."""
