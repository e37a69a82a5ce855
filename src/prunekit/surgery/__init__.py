"""prunekit.surgery (in progress)."""
