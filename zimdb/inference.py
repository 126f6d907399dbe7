"""The model's logits for a whole encoded split, batched by length, without gradients."""

import torch

from zimdb.batching import Encoded, batch_indices


@torch.no_grad()
def logits(model: torch.nn.Module, data: Encoded, batch_size: int, autocast) -> torch.Tensor:
    """The model's logits for every row of `data`, in row order, computed in length order."""
    model.eval()
    out = torch.empty(len(data), device=data.ids.device)
    for idx in batch_indices(data.lengths_np, batch_size):
        ids, lengths, _ = data.batch(idx)
        with autocast:
            out[torch.from_numpy(idx).to(out.device)] = model(ids, lengths).float()
    return out
