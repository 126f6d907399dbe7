"""One optimizer step over a window of micro-batches, and the learning-rate schedule.

Gradient accumulation: each micro-batch's summed loss is divided by the window's sample count,
so the accumulated gradients are those of one batch holding all the window's samples, whatever
the sizes of its micro-batches (the last window of an epoch is usually short).
"""

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from zimdb.model.batches import Batch

# A window GradScaler skipped (inf or NaN gradients) still counts as a step of the schedule, so
# the schedule ends where it was planned to; torch takes that for a misordered call and warns.
warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")


def lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """train.lr's multiplier at each optimizer step: 1, or a cosine from 1 down to 0 at `steps`."""
    if schedule == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def position_loss(every: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The review's label as the target of the verdict at each of its real positions, averaged
    over a review's positions and summed over reviews. A model trained on whole reviews alone
    has never been asked for a verdict a few words in, which is what a short text and the page's
    running verdict ask of it."""
    real = torch.arange(every.shape[1], device=every.device) < lengths[:, None]
    targets = labels[:, None].expand_as(every)
    each = F.binary_cross_entropy_with_logits(every.float(), targets, reduction="none")
    return ((each * real).sum(dim=1) / lengths).sum()


@dataclass
class Stepper:
    model: torch.nn.Module  # the DDP wrapper when data-parallel
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: object  # the run's one precision context
    grad_clip: float
    position_weight: float = 0.0  # of the loss at every position (train.position_loss)

    def backward(self, window: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the window's mean loss; its summed loss at the reviews' last tokens
        (what the verdict reads) and correct count, on device."""
        size = sum(len(labels) for _, _, labels in window)
        loss_sum = torch.zeros((), device=window[0][2].device)
        correct = torch.zeros((), device=loss_sum.device, dtype=torch.long)
        for i, (ids, lengths, labels) in enumerate(window):
            if isinstance(self.model, DDP):
                # Averaging gradients across processes is the costly part of a DDP backward:
                # once per window, on its last micro-batch, is all the optimizer needs.
                self.model.require_backward_grad_sync = i == len(window) - 1
            with self.autocast:
                out = self.model(ids, lengths)
            loss = F.binary_cross_entropy_with_logits(out.verdict.float(), labels, reduction="sum")
            total = loss
            if self.position_weight:
                total = total + self.position_weight * position_loss(out.every, lengths, labels)
            self.scaler.scale(total / size).backward()
            loss_sum += loss.detach()
            correct += ((out.verdict > 0) == (labels > 0.5)).sum()
        return loss_sum, correct

    def step(self, window: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """backward() over the window, then one optimizer step; nothing waits for the device."""
        loss_sum, correct = self.backward(window)
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, correct
