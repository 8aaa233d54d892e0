"""Several trained networks as one: the average of their class probabilities, as nnU-Net's
ensembling averages the softmax outputs of folds or configurations before the argmax.

``EnsembleNetwork(nets)(x)`` returns ``log(mean_i softmax(net_i(x)))``: logits whose softmax is
exactly the members' mean probability (a softmax of log-probabilities that sum to one gives them
back). Everything that turns a network's logits into probabilities (sliding-window blending,
mirror test-time augmentation, a classifier's softmax) therefore averages the members' probabilities
without knowing it is looking at an ensemble; with mirroring each member's flips are averaged
too, the same mean in another order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class EnsembleNetwork(nn.Module):
    """The mean class probability of ``nets`` as logits; inference only (each member must
    return one tensor of logits, i.e. be in eval mode)."""

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("EnsembleNetwork is for inference: call .eval() first")
        total: torch.Tensor | None = None
        for net in self.members:
            logits = net(x)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(
                    f"ensemble member {type(net).__name__} returned {type(logits).__name__}, "
                    "not one tensor of logits"
                )
            probabilities = torch.softmax(logits.float(), dim=1)
            total = probabilities if total is None else total + probabilities
        assert total is not None
        # The floor keeps log finite where every member gives a class exactly zero probability.
        return torch.log((total / len(self.members)).clamp_min(torch.finfo(torch.float32).tiny))
