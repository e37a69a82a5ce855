"""The corpus of networks nobody here wrote builds offline and runs: the test bed of every capability."""

import pytest
import torch

from prunekit.testing import corpus


@pytest.mark.parametrize("name", corpus.NAMES)
def test_every_corpus_network_builds_and_runs(name: str) -> None:
    net = corpus.build(name)
    with torch.no_grad():
        out = corpus.logits(net.model(net.inputs))
    assert out.shape == (2, corpus.NUM_CLASSES)
    assert torch.isfinite(out).all()
    again = corpus.build(name)  # seeded: the same weights and inputs every time
    assert torch.equal(again.inputs, net.inputs)
    with torch.no_grad():
        assert torch.equal(corpus.logits(again.model(again.inputs)), out)


def test_unknown_corpus_name_lists_the_choices() -> None:
    with pytest.raises(KeyError, match="hf-vit"):
        corpus.build("nosuch")
