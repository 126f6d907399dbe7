"""The model's logits for an encoded split, batched by length, without gradients."""

import numpy as np
import torch

from zimdb.model.batches import Encoded, batch_indices


@torch.no_grad()
def logits(
    model: torch.nn.Module,
    data: Encoded,
    batch_size: int,
    autocast,
    rows: np.ndarray | None = None,
) -> torch.Tensor:
    """The model's logits for `rows` of `data` (all of them by default), in that order,
    computed in length order."""
    model.eval()
    rows = np.arange(len(data)) if rows is None else rows
    order = batch_indices(data.lengths[rows], batch_size)  # positions in `rows`
    out = torch.empty(len(rows), device=data.device)
    computed = torch.empty_like(out)
    start = 0
    for positions in order:
        ids, lengths, _ = data.batch(rows[positions])
        with autocast:
            computed[start : start + len(positions)] = model(ids, lengths).verdict.float()
        start += len(positions)
    if order:  # one scatter to the rows' order: one copy of the positions to the device
        out[torch.from_numpy(np.concatenate(order)).to(out.device)] = computed
    return out
