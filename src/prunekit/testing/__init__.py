"""Helpers for testing prunekit and your own pruning code against networks nobody here wrote."""
