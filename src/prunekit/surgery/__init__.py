"""Surgery: make a pruned network really smaller.

Structured (built on Torch-Pruning's dependency graph, see :mod:`prunekit.surgery.graph`):

* :func:`channel_groups` - the coupled groups of output channels a method should score as one unit;
* :func:`remove_channels` - remove channels / neurons and everything coupled to them, in place (attention
  q/k/v in whole heads), verified against the masked network on the example inputs;
* :func:`residual_blocks` - residual blocks found in the traced graph (output = input + branch), any class;
* :func:`remove_blocks` - depth pruning: replace residual blocks by what is left when their branch is 0,
  verified against the network whose branches are zeroed;
* :func:`remove_branches` - one branch of a sum with several (a transformer layer's attention or MLP),
  verified against the network with that branch zeroed;
* :func:`zero_channel_plan` - a plan removing exactly the channels whose output is identically zero;
* :func:`conv_group_plan` - a plan removing whole groups of a grouped convolution.

Deployment: :func:`fold_batchnorm` (BN folded into the preceding conv, in place) and :func:`deployed`.

Unstructured: :class:`MaskSet` (masks kept through optimizer steps) and :func:`save_sparse` /
:func:`load_sparse` (files that store only the non-zeros, loaded back bit for bit).
"""

from prunekit.surgery.blocks import (
    Skip,
    ZeroBranch,
    block_analysis,
    removable_blocks,
    remove_blocks,
    remove_branches,
    residual_blocks,
)
from prunekit.surgery.fold import deployed, fold_batchnorm
from prunekit.surgery.graph import ChannelGroup, channel_groups, meta_twin
from prunekit.surgery.masks import MaskSet, keep_count, topk_mask
from prunekit.surgery.sparse import load_sparse, save_sparse
from prunekit.surgery.structured import (
    LayerChange,
    SurgeryReport,
    compare_outputs,
    conv_group_plan,
    count_params,
    normalise_plan,
    remove_channels,
    zero_channel_plan,
)

__all__ = [
    "ChannelGroup",
    "LayerChange",
    "MaskSet",
    "Skip",
    "SurgeryReport",
    "ZeroBranch",
    "block_analysis",
    "channel_groups",
    "compare_outputs",
    "conv_group_plan",
    "count_params",
    "deployed",
    "fold_batchnorm",
    "keep_count",
    "load_sparse",
    "meta_twin",
    "normalise_plan",
    "removable_blocks",
    "remove_blocks",
    "remove_branches",
    "remove_channels",
    "residual_blocks",
    "save_sparse",
    "topk_mask",
    "zero_channel_plan",
]
