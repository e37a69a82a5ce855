"""prunekit.data (in progress)."""
