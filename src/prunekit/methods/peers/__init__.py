"""The peers the four papers are compared with: unstructured (one-shot magnitude, DSD, torch's global
magnitude), filter (L1-filter, soft filter pruning, Torch-Pruning magnitude, random filters) and
penalty-then-prune (Network Slimming, Torch-Pruning BN-scale). Each is a plain method of the contract in
:mod:`prunekit.methods.api`, registered by name in :mod:`prunekit.methods`."""
