"""Surgery on every corpus network (issue 16): exact on dead channels and dead blocks, verified on live
channels, and every refusal one PrunekitError line naming the layer; never a raw error, never a silent change."""

from __future__ import annotations

import pytest
import torch

from prunekit.testing import corpus

# what cannot be removed exactly, by nature, and is refused in one line (any other refusal fails the test)
REFUSED = {
    # Swin's patch merging regroups 4 neighbouring tokens' channels by a reshape: the check refuses it
    "hf-swin": {"live channels": 1},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is as fast


def _one_line_naming_the_layer(msg: str) -> None:
    assert "\n" not in msg and msg.startswith(("remove_channels:", "remove_blocks:")), msg
    assert "'" in msg, msg  # a quoted layer / group / block name


@pytest.mark.parametrize("name", corpus.NAMES)
def test_surgery_on_every_corpus_network(name: str) -> None:
    net = corpus.build(name)
    with torch.no_grad():
        y = corpus.logits(net.model(net.inputs))
    tol = 1e-5 * float(y.abs().max())
    expected = REFUSED.get(name, {})
    for capability, check in corpus.CAPABILITIES.items():
        out = check(net)  # a raw KeyError / IndexError / shape error fails here
        refused = out.refused or {}
        for msg in refused.values():
            _one_line_naming_the_layer(msg)
        assert len(refused) == expected.get(capability, 0), (capability, refused)
        assert out.done + len(refused) == out.total, (capability, out)
        assert out.max_diff <= tol, (capability, out.max_diff)  # dead: unchanged; live: equals masking
    with torch.no_grad():  # the corpus network itself was never touched
        assert torch.equal(corpus.logits(net.model(net.inputs)), y)


def test_the_corpus_has_units_to_remove() -> None:
    """Every network has prunable groups, and blocks are found in the HF and hand-written residual nets."""
    from prunekit.surgery import channel_groups, residual_blocks

    blocks = {}
    for name in ("hf-resnet-basic", "hf-convnext", "hf-mobilenetv2", "hf-vit", "hf-swin", "my-res-unit", "preact",
                 "no-post-act", "mha-transformer", "view-transformer"):
        net = corpus.build(name)
        assert channel_groups(net.model, net.inputs), name
        blocks[name] = len(residual_blocks(net.model, net.inputs))
    assert blocks == {"hf-resnet-basic": 2, "hf-convnext": 3, "hf-mobilenetv2": 10, "hf-vit": 2, "hf-swin": 2,
                      "my-res-unit": 3, "preact": 3, "no-post-act": 3, "mha-transformer": 2, "view-transformer": 2}
