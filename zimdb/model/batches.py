"""Encoded reviews held in memory on the device, and length-bucketed batches over them.

Reviews of similar length share a batch, so each batch is cut to its own longest review
instead of padding every row to max_len. The model reads each review's last real token, so
the padding never changes a prediction, only the work spent on it.
"""

from dataclasses import dataclass

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids, lengths, labels
BUCKET_BATCHES = 50  # batches sorted together: enough to group lengths, few enough to stay random


@dataclass
class Encoded:
    ids: torch.Tensor  # [n, max_len] int64
    lengths: torch.Tensor  # [n] int64
    labels: torch.Tensor  # [n] float32
    lengths_np: np.ndarray  # the same lengths on the host, to cut batches without a device sync

    @classmethod
    def from_records(cls, records: np.ndarray, device: torch.device) -> "Encoded":
        """The encode stage's records (zimdb.data.artifacts.read_encoded) on `device`."""
        return cls.from_arrays(records["ids"], records["length"], records["label"], device)

    @classmethod
    def from_arrays(cls, ids, lengths, labels, device: torch.device) -> "Encoded":
        lengths = np.asarray(lengths, dtype=np.int64)
        return cls(
            ids=torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device),
            lengths=torch.from_numpy(lengths).to(device),
            labels=torch.from_numpy(np.asarray(labels, dtype=np.float32)).to(device),
            lengths_np=lengths,
        )

    def __len__(self) -> int:
        return len(self.lengths_np)

    def subset(self, idx: np.ndarray) -> "Encoded":
        rows = torch.from_numpy(idx).to(self.ids.device)
        return Encoded(self.ids[rows], self.lengths[rows], self.labels[rows], self.lengths_np[idx])

    def batch(self, idx: np.ndarray, rows: torch.Tensor) -> Batch:
        """ids cut to the batch's longest review, lengths, labels of the rows `idx` (`rows`: the
        same indices on the device)."""
        width = int(self.lengths_np[idx].max())
        return self.ids[rows, :width], self.lengths[rows], self.labels[rows]

    def batches(self, order: list[np.ndarray]) -> list[Batch]:
        """The batches of `order`, their indices sent to the device in one copy: a copy per
        batch from pageable memory would make the host wait for the GPU every time."""
        if not order:
            return []
        flat = torch.from_numpy(np.concatenate(order)).to(self.ids.device)
        rows = flat.split([len(idx) for idx in order])
        return [self.batch(idx, r) for idx, r in zip(order, rows, strict=True)]


def batch_indices(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None = None, together: int = 1
) -> list[np.ndarray]:
    """Index arrays, one per batch. With `rng`: a random epoch order; without: sorted by length.

    With `together` = k, the order is shuffled in runs of k consecutive batches of a
    length-sorted chunk, so the k data-parallel processes of one step get batches of about the
    same width and none waits long for another.
    """
    if rng is None:
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    chunk = batch_size * together * -(-BUCKET_BATCHES // together)  # whole runs per chunk
    runs = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        runs += [batches[i : i + together] for i in range(0, len(batches), together)]
    # Only the last chunk can end in a short run; it goes last so every other run stays aligned
    # with the processes' steps.
    short = runs.pop() if runs and len(runs[-1]) < together else []
    return [batch for i in rng.permutation(len(runs)) for batch in runs[i]] + short
