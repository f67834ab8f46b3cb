"""Group-wise semantic mining (Li et al., "Group-Wise Semantic Mining for Weakly Supervised Semantic
Segmentation", AAAI 2021): the classifier looks at a group of images that share a tag as a graph.

- Nodes: the images of the group; a node's state is its feature map, embedded to `channels` by a
  1x1 conv (h^0).
- Edges: co-attention. The message from node j to node i compares every position of i with every
  position of j (S = h_i^T W h_j, a learned bilinear affinity), normalises each row of S over j's
  positions (softmax) and carries j's states to the positions of i that resemble them: what the
  two images have in common flows into i.
- Message passing: each node is updated from the mean of its incoming messages by a gated
  recurrent unit (a 1x1 ConvGRU: the co-attention already mixes positions, so the update needs no
  spatial kernel), `steps` times. A group of one (an image alone at inference) passes messages
  with itself.
- Graph dropout (training only): the positions of a node that the other nodes attend to most are
  its most shared, common semantics; zeroing the top `dropout` fraction of them in the readout
  makes the classifier find the rest of each object too (what erasing does for one image), instead
  of learning the group's common part only.
- Readout: the class maps are a 1x1 conv on [backbone features, refined state] (the paper's
  readout of h^0 and h^K), pooled like the plain classifier (GAP or peaks).

`GroupClassifier` is the CAM classifier (models/cam.py) with the graph between its features
and its class conv; `classifier.group.enabled` in params.yaml builds it (models.classifier.build_localizer).
"""
from __future__ import annotations

import torch
from torch import nn

from models.cam import CAMClassifier, peak_stimulation


class CoAttention(nn.Module):
    """The message from node j to node i: softmax over j's positions of h_i^T W h_j, times h_j."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Conv2d(channels, channels, 1, bias=False)   # W of the bilinear affinity
        self.scale = channels ** -0.5

    def forward(self, hi: torch.Tensor, hj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hi: G x D x hi x wi, hj: G x D x hj x wj (any sizes) -> (message G x D x hi x wi, attention
        G x Pi x Pj: row p of i's positions is a distribution over j's positions)."""
        g, d, h, w = hi.shape
        query = self.weight(hi).flatten(2).transpose(1, 2)               # G x Pi x D
        keys = hj.flatten(2)                                             # G x D x Pj
        attention = torch.softmax(torch.bmm(query, keys).float() * self.scale, dim=-1).to(hj.dtype)
        message = torch.bmm(attention, keys.transpose(1, 2))             # G x Pi x D
        return message.transpose(1, 2).reshape(g, d, h, w), attention


class ConvGRU(nn.Module):
    """A gated recurrent update of a node state h from its aggregated message m (1x1 convolutions)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gates = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.candidate = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        update, reset = torch.sigmoid(self.gates(torch.cat([h, m], 1))).chunk(2, 1)
        candidate = torch.tanh(self.candidate(torch.cat([reset * h, m], 1)))
        return (1 - update) * h + update * candidate


class GroupGraph(nn.Module):
    """Message passing over the nodes of groups: node k of every group is one tensor G x C x h_k x w_k
    (the G groups run side by side; nodes may differ in size)."""

    def __init__(self, in_channels: int, channels: int = 256, steps: int = 2):
        super().__init__()
        self.steps = steps
        self.embed = nn.Conv2d(in_channels, channels, 1)
        self.attend = CoAttention(channels)
        self.update = ConvGRU(channels)

    def forward(self, nodes: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """(refined states, one G x D x h_k x w_k per node; co-attention each node's positions received
        from the other nodes in the last step, G x P_k each, a distribution over the node's positions;
        None with steps 0). A group of one attends to itself."""
        states = [self.embed(f) for f in nodes]
        received = None
        n = len(states)
        for _ in range(self.steps):
            messages = []
            received = [torch.zeros(s.shape[0], s.shape[2] * s.shape[3], device=s.device) for s in states]
            for i in range(n):
                senders = [j for j in range(n) if j != i] or [i]
                total = 0
                for j in senders:
                    message, attention = self.attend(states[i], states[j])
                    total = total + message
                    received[j] = received[j] + attention.detach().float().mean(dim=1)
                messages.append(total / len(senders))
            states = [self.update(h, m) for h, m in zip(states, messages)]
            received = [r / max(n - 1, 1) for r in received]   # each node is a sender to the n - 1 others
        return states, received


def graph_dropout(x: torch.Tensor, received: torch.Tensor, rate: float) -> torch.Tensor:
    """x (G x C x h x w) with every channel zeroed at the int(rate * h * w) positions of each node
    that received the most co-attention (received: G x h*w), the most shared responses."""
    g, _, h, w = x.shape
    k = int(rate * h * w)
    if k == 0:
        return x
    top = received.topk(k, dim=1).indices
    keep = torch.ones(g, h * w, device=x.device, dtype=x.dtype).scatter(1, top, 0.0)
    return x * keep.view(g, 1, h, w)


class GroupClassifier(CAMClassifier):
    """The CAM classifier with group-wise semantic mining between its features and its class conv.

    forward(images, group_size, context):
    - group_size k: consecutive runs of k images of the batch are groups (the group sampler's
      batches: wsss/dataset/groups.py); 1 (the default, so every caller of a plain classifier works):
      each image is a group of one and passes messages with itself;
    - context: feature maps of other images (`features`, 1 x C x h x w each, any size) that join the
      group of every image of the batch (map export's nearest neighbours: wsss/localization/group.py);
      only the batch's own outputs are returned.
    """

    def __init__(self, n_classes: int, group_size: int = 4, group_steps: int = 2, group_dropout: float = 0.2,
                 group_channels: int = 256, **kwargs):
        super().__init__(n_classes, **kwargs)
        features = self.classifier.in_channels
        self.group_size, self.group_dropout = group_size, group_dropout
        self.graph = GroupGraph(features, group_channels, group_steps)
        self.classifier = nn.Conv2d(features + group_channels, n_classes, 1, bias=False)

    @classmethod
    def config_kwargs(cls, cfg: dict) -> dict:
        group = cfg["group"]
        return {**super().config_kwargs(cfg), "group_size": group["size"], "group_steps": group["steps"],
                "group_dropout": group["dropout"], "group_channels": group["channels"]}

    def new_modules(self) -> list[nn.Module]:
        return [self.extra, self.graph, self.classifier]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The per-image feature maps the graph's nodes start from (backbone and extra convs)."""
        return self.extra(self.backbone(self.normalize(images)))

    def readout(self, features: torch.Tensor, group_size: int = 1,
                context: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, class maps) of a batch's features, grouped as `forward` says."""
        n = features.shape[0]
        if context:   # node 0: the batch (each image its own group), then the context images
            states, received = self.graph([features, *(c.expand(n, -1, -1, -1) for c in context)])
            states, received = states[:1], received[:1] if received else None
        else:         # node k: member k of every group (the batch holds the groups one after another)
            if n % group_size:
                raise ValueError(f"a batch of {n} images does not split into groups of {group_size}")
            per_node = features.unflatten(0, (n // group_size, group_size))
            states, received = self.graph([per_node[:, k] for k in range(per_node.shape[1])])
        refined = torch.stack(states, 1).flatten(0, 1)   # back in the batch's order
        x = torch.cat([features, refined.to(features.dtype)], 1)
        if self.training and self.group_dropout > 0 and received is not None:
            x = graph_dropout(x, torch.stack(received, 1).flatten(0, 1), self.group_dropout)
        maps = self.classifier(x)
        if self.pooling == "peaks":
            return peak_stimulation(maps, self.peak_window), maps
        return maps.mean(dim=(2, 3)), maps

    def forward(self, images: torch.Tensor, group_size: int = 1,
                context: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.readout(self.features(images), group_size, context)


def is_group(model: nn.Module) -> bool:
    return isinstance(model, GroupClassifier)

