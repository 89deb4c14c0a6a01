"""mullama: extract music features once, then train, serve and evaluate MU-LLaMA from the store."""

__version__ = "0.1.0"
