"""The fc head on pooled SPP vectors: fc6 -> fc7 -> (K+1)-way fc8, and its fine-tuning.

Shape shorthand: B windows in a mini-batch, D = C * sum(n^2) pooled dimension, H6/H7 hidden sizes,
K classes (+1 for background, label 0).

The paper's head (docs/algorithm.md section 7): fc6 and fc7 (4096 each, ReLU, dropout 0.5)
fine-tuned on detection data with the conv layers frozen; a window is foreground (label of its
best ground-truth box) when its IoU is >= 0.5, background when its best IoU is in [0.1, 0.5);
mini-batches are 25% foreground; SGD with momentum 0.9 and weight decay 5e-4. The paper starts
fc6/fc7 from ImageNet; sppdet starts them from ``sppdet pretrain``'s head when its sizes match,
else from a seeded random init.
"""

from __future__ import annotations

import json
import os
import pickle  # only for the exception type torch.load raises on a non-checkpoint
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from sppdet.structures.boxes import iou_matrix
from sppdet.errors import ModelError, TrainingError
from sppdet.parallel import Progress, no_progress
from sppdet.fileio import to_jsonable
from sppdet.models.model_file import save_torch_file


class FcHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8 (K + 1 logits)."""

    def __init__(self, in_dim: int, hidden: tuple[int, int], num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.in_dim, self.hidden, self.num_classes = in_dim, tuple(hidden), num_classes
        self.fc6 = nn.Linear(in_dim, hidden[0])
        self.fc7 = nn.Linear(hidden[0], hidden[1])
        self.fc8 = nn.Linear(hidden[1], num_classes + 1)
        self.dropout = nn.Dropout(dropout)

    def fc7_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc7 activations [B, H7] (after ReLU, dropout only in training) of pooled [B, D]."""
        x = self.dropout(torch.relu(self.fc6(pooled)))
        return self.dropout(torch.relu(self.fc7(x)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class logits [B, K + 1] of pooled [B, D] (column 0 is background)."""
        return self.fc8(self.fc7_features(pooled))

    def describe(self) -> dict:
        return {"in_dim": self.in_dim, "hidden": list(self.hidden), "num_classes": self.num_classes}


def save_head(path: str | os.PathLike, head: FcHead, metadata: dict) -> None:
    """Save the head's state dict and ``metadata`` (JSON-able) atomically; load with :func:`load_head`."""
    payload = {"state": head.state_dict(),
               "meta": json.dumps(to_jsonable({**metadata, "architecture": head.describe()}), sort_keys=True)}
    save_torch_file(path, payload)


def load_head(path: str | os.PathLike, expected_in_dim: int | None = None) -> tuple[FcHead, dict]:
    """The head saved at ``path`` (eval mode) and its metadata; ``ModelError`` if it cannot be
    loaded or expects another pooled dimension than ``expected_in_dim``."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(payload["meta"])
        arch = meta["architecture"]
    except (OSError, KeyError, ValueError, RuntimeError, EOFError, TypeError, pickle.UnpicklingError) as exc:
        reason = (str(exc).splitlines() or [""])[0] or type(exc).__name__
        raise ModelError(f"{path}: not an sppdet fc head ({reason}); delete it and re-run the stage that "
                         "wrote it (`sppdet finetune`, or `sppdet pretrain` for its head.pt)") from None
    if expected_in_dim is not None and arch["in_dim"] != expected_in_dim:
        raise ModelError(f"{path}: head expects {arch['in_dim']}-d pooled vectors, the features give "
                         f"{expected_in_dim}; re-run `sppdet finetune` on these features")
    head = FcHead(arch["in_dim"], tuple(arch["hidden"]), arch["num_classes"])
    head.load_state_dict(payload["state"])
    return head.eval(), meta


def label_windows(windows: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                  fg_iou: float = 0.5, bg_iou: tuple[float, float] = (0.1, 0.5)) -> np.ndarray:
    """Training labels int64 [R] for windows [R, 4] given ground truth [G, 4] with labels [G] in 1..K.

    The label of the best-overlapping box when its IoU >= ``fg_iou``; 0 (background) when the best
    IoU lies in ``[bg_iou[0], bg_iou[1])``; -1 (unused) otherwise. Boxes: ``sppdet.structures.boxes`` convention.
    """
    labels = np.full(len(windows), -1, dtype=np.int64)
    if len(gt_boxes) == 0:
        labels[:] = 0 if bg_iou[0] <= 0 else -1
        return labels
    overlaps = iou_matrix(windows, gt_boxes)
    best = overlaps.argmax(axis=1)
    best_iou = overlaps[np.arange(len(windows)), best]
    labels[(best_iou >= bg_iou[0]) & (best_iou < bg_iou[1])] = 0
    fg = best_iou >= fg_iou
    labels[fg] = np.asarray(gt_labels, dtype=np.int64)[best[fg]]
    return labels


def sample_windows(labels: np.ndarray, count: int, fg_fraction: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Indices of up to ``count`` windows: at most ``fg_fraction`` of them foreground (label > 0),
    the rest background (label 0), drawn without replacement; windows labelled -1 are never used."""
    fg = np.flatnonzero(labels > 0)
    bg = np.flatnonzero(labels == 0)
    n_fg = min(len(fg), int(round(count * fg_fraction)))
    n_bg = min(len(bg), count - n_fg)
    return np.concatenate([rng.choice(fg, n_fg, replace=False), rng.choice(bg, n_bg, replace=False)])


@dataclass
class TrainStats:
    """Running loss and accuracy of one epoch."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0

    def add(self, loss: float, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss * len(labels)
        self.correct += int((logits.argmax(1) == labels).sum())
        self.seen += len(labels)

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def lr_factor(epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of 0-based ``epoch`` of ``epochs``: 1, then 0.1 from the
    epoch three quarters in (at least the second): one step, as the paper's fine-tuning. The fc
    head and end-to-end fine-tuning (``sppdet.training.finetune_conv``) both follow it."""
    return 0.1 if epoch >= max(1, int(np.ceil(epochs * 0.75))) else 1.0


def check_finite_loss(loss: float, stage: str, epoch: int, lr: float) -> None:
    """``TrainingError`` naming ``stage`` when ``loss`` is NaN or infinite: the weights are then
    garbage, and saving them would only make later stages fail obscurely (an all-zero feature)."""
    if not np.isfinite(loss):
        raise TrainingError(f"{stage}: the training loss became {loss} in epoch {epoch + 1}, so training "
                            f"diverged and nothing was saved; try a lower --lr (this run: {lr:g})")


def random_state(cuda: Sequence = ()) -> dict:
    """torch's global RNG states, the CPU's and those of the ``cuda`` devices: what dropout draws
    from, so a resumed run draws what an uninterrupted one would (uint8 tensors, which
    ``torch.load(weights_only=True)`` reads)."""
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(d) for d in cuda]}


def restore_random_state(state: dict, cuda: Sequence = ()) -> None:
    """Set torch's global RNG states to those :func:`random_state` returned (a checkpoint made on
    other devices restores what it has)."""
    torch.set_rng_state(state["cpu"])
    for device, value in zip(cuda, state["cuda"]):
        torch.cuda.set_rng_state(value, device)


def epoch_state(epochs_done: int, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                history: Sequence, cuda: Sequence = (), step: int = 0) -> dict:
    """Everything later epochs of a training loop depend on, after ``epochs_done`` epochs: the
    ``modules``' and the optimizer's state dicts (momentum buffers), the per-epoch ``history``
    (dataclasses, stored as dicts), the schedule's ``step`` counter and torch's RNG states. Plain
    tensors, numbers, lists and dicts only, for a checkpoint read with ``weights_only``."""
    return {"epoch": epochs_done, "step": step, "optimizer": optimizer.state_dict(),
            "models": {name: module.state_dict() for name, module in modules.items()},
            "history": [asdict(entry) for entry in history], "rng": random_state(cuda)}


def restore_epoch_state(state: dict, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        cuda: Sequence = ()) -> tuple[int, int, list[dict]]:
    """Load an :func:`epoch_state` into ``modules``, ``optimizer`` and torch's RNG; returns (epochs
    done, step counter, history as dicts) for the loop to continue from."""
    for name, module in modules.items():
        module.load_state_dict(state["models"][name])
    optimizer.load_state_dict(state["optimizer"])
    restore_random_state(state["rng"], cuda)
    return int(state["epoch"]), int(state["step"]), list(state["history"])


def train_head(head: FcHead, batches: Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]],
               epochs: int, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
               seed: int = 0, progress: Progress = no_progress, resume: dict | None = None,
               save_epoch: Callable[[dict], None] | None = None) -> list[TrainStats]:
    """SGD on ``head`` over ``epochs``; ``batches(epoch)`` yields (pooled [B, D] float32,
    labels [B] int64 in 0..K). The learning rate drops 10x for the last quarter of the epochs.
    ``progress(0, loss=..., acc=...)`` reports each batch (the caller advances the bar, e.g. per
    image). Returns per-epoch stats. A NaN or infinite loss stops training with ``TrainingError``
    (the caller then saves nothing).

    Resumable: ``save_epoch(state)`` gets an :func:`epoch_state` (head, momentum, history, dropout
    RNG) after each epoch; given back as ``resume``, training continues after that epoch and ends
    with the weights of an uninterrupted run (``batches`` must depend on the epoch alone)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    history, first = [], 0
    if resume is not None:
        first, _, done = restore_epoch_state(resume, {"head": head}, optimizer)
        history = [TrainStats(**entry) for entry in done]
    head.train()
    for epoch in range(first, epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(epoch, epochs)
        stats = TrainStats()
        for pooled, labels in batches(epoch):
            x, y = torch.from_numpy(pooled), torch.from_numpy(labels)
            logits = head(x)
            loss = nn.functional.cross_entropy(logits, y)
            value = loss.item()
            check_finite_loss(value, "sppdet finetune", epoch, lr)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            stats.add(value, logits.detach(), y)
            progress(0, loss=stats.mean_loss, acc=stats.accuracy)
        history.append(stats)
        if save_epoch is not None:
            save_epoch(epoch_state(epoch + 1, {"head": head}, optimizer, history))
    head.eval()
    return history

def fc7_features(head: FcHead, pooled: np.ndarray | torch.Tensor, chunk: int = 4096) -> np.ndarray:
    """fc7 activations float32 [R, H7] of pooled vectors [R, D], in eval mode, in chunks."""
    head.eval()
    if isinstance(pooled, np.ndarray) and not pooled.flags.writeable:
        pooled = pooled.copy()  # a kept array (PooledMemo): torch wants to own writable memory
    x = torch.as_tensor(pooled, dtype=torch.float32)
    with torch.inference_mode():
        parts = [head.fc7_features(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return (torch.cat(parts) if parts else torch.zeros(0, head.hidden[1])).numpy()


def iterate_minibatches(pooled_per_image: Iterator[tuple[np.ndarray, np.ndarray]],
                        batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Re-chunk per-image (pooled [R_i, D], labels [R_i]) into batches of ``batch_size`` windows
    (the last one may be smaller); memory holds at most one batch plus one image."""
    buffer_x: list[np.ndarray] = []
    buffer_y: list[np.ndarray] = []
    held = 0
    for pooled, labels in pooled_per_image:
        buffer_x.append(pooled)
        buffer_y.append(labels)
        held += len(labels)
        while held >= batch_size:
            x, y = np.concatenate(buffer_x), np.concatenate(buffer_y)
            yield x[:batch_size], y[:batch_size]
            buffer_x, buffer_y, held = [x[batch_size:]], [y[batch_size:]], len(y) - batch_size
    if held:
        yield np.concatenate(buffer_x), np.concatenate(buffer_y)
