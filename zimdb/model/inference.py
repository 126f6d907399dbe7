"""The model's logits for a whole encoded split, batched by length, without gradients."""

import numpy as np
import torch

from zimdb.model.batches import Encoded, batch_indices


@torch.no_grad()
def logits(model: torch.nn.Module, data: Encoded, batch_size: int, autocast) -> torch.Tensor:
    """The model's logits for every row of `data`, in row order, computed in length order."""
    model.eval()
    out = torch.empty(len(data), device=data.ids.device)
    order = batch_indices(data.lengths_np, batch_size)
    computed = torch.empty_like(out)
    start = 0
    for ids, lengths, _ in data.batches(order):
        with autocast:
            computed[start : start + len(ids)] = model(ids, lengths).verdict.float()
        start += len(ids)
    if order:
        out[torch.from_numpy(np.concatenate(order)).to(out.device)] = computed
    return out
