"""Encoded reviews on the host, and length-bucketed batches of them sent to the device.

The ids stay where the encode stage wrote them, memory-mapped (any split size costs no memory
until read); each batch gathers its rows, cut to its own longest review rounded up to a multiple
of WIDTH_STEP instead of padding every row to max_len. The model reads each review's last real
token, so the padding never changes a prediction, only the work spent on it. On a GPU a batch
goes through pinned memory with a non-blocking copy, so the host gathers the next while the GPU
computes: no sync in a step.
"""

from dataclasses import dataclass

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids, lengths, labels
BUCKET_BATCHES = 50  # batches sorted together: enough to group lengths, few enough to stay random
# Batch widths are multiples of this: a few dozen shapes, not one for every length up to max_len,
# so oneDNN's kernels and the allocator's blocks are reused rather than made anew for each (bf16
# on a 2-core AMD EPYC: 1,000-1,070 -> 1,130-1,200 samples/s, and anonymous memory flat at 1.0
# GB where it grew past 2.9 GB in 400 steps; fp32 capped to AVX2: 3% slower, the padding's work,
# 1.05 GB flat against 1.66 GB growing). A GPU's tensor cores want multiples of 8 too.
WIDTH_STEP = 8


@dataclass
class Encoded:
    ids: np.ndarray  # [n, max_len] as stored (uint16 or int32): a memory map's view, or in memory
    lengths: np.ndarray  # [n] int64, in memory: batches are ordered and cut by them
    labels: np.ndarray  # [n] float32, in memory
    device: torch.device  # where batches go

    @classmethod
    def from_records(cls, records: np.ndarray, device: torch.device) -> "Encoded":
        """The encode stage's records (zimdb.data.artifacts.open_encoded) for `device`."""
        return cls.from_arrays(records["ids"], records["length"], records["label"], device)

    @classmethod
    def from_arrays(cls, ids, lengths, labels, device: torch.device) -> "Encoded":
        return cls(
            ids,
            np.asarray(lengths, dtype=np.int64),
            np.asarray(labels, dtype=np.float32),
            torch.device(device),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, idx: np.ndarray) -> "Encoded":
        """The rows `idx`, copied into memory."""
        return Encoded(self.ids[idx], self.lengths[idx], self.labels[idx], self.device)

    def width(self, idx: np.ndarray) -> int:
        """The width of a batch of the rows `idx`: its longest review's length rounded up to a
        multiple of WIDTH_STEP, at most max_len."""
        longest = int(self.lengths[idx].max())
        return min(-(-longest // WIDTH_STEP) * WIDTH_STEP, self.ids.shape[1])

    def batch(self, idx: np.ndarray) -> Batch:
        """ids (int64) cut to the batch's width, lengths and labels of the rows `idx`, on the
        device."""
        host = (
            self.ids[idx, : self.width(idx)].astype(np.int64),
            self.lengths[idx],
            self.labels[idx],
        )
        tensors = [torch.from_numpy(a) for a in host]
        if self.device.type == "cuda":
            # Pinned: the copy runs while the host goes on; torch's pinned-memory cache reuses
            # a block only once the copy that read it has finished.
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in tensors)
        return tuple(tensors)

    def batches(self, order: list[np.ndarray]) -> list[Batch]:
        return [self.batch(idx) for idx in order]


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
