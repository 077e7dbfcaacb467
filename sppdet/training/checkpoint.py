"""Per-epoch training checkpoints, so a killed ``pretrain`` or ``finetune`` continues where it stopped.

A training loop (``train_classifier``, ``train_head``, ``train_end_to_end``) hands its state after
each epoch (``sppdet.models.head.epoch_state``: weights, momentum, epoch, schedule step, history,
RNG) to :meth:`EpochCheckpoint.save`, which writes it atomically (``save_torch_file``) beside the
stage's output, e.g. ``pretrain-<hash>/checkpoint.pt``. The next run of the same stage loads it and
the loop continues after that epoch, ending with the weights an uninterrupted run gives (same
device and thread count). The folder's hash covers the settings and the inputs, so a checkpoint
never meets other ones. The stage deletes it once its final output is saved.

A checkpoint that does not read back (a disk that filled up, a truncated copy) is one warning and
training starts from scratch: losing a few epochs beats failing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sppdet.errors import SppdetWarning
from sppdet.models.model_file import save_torch_file

CHECKPOINT_FILE = "checkpoint.pt"
#: Marks a file as one of these checkpoints, and its layout's version.
KIND = "sppdet epoch checkpoint 1"
#: The keys ``sppdet.models.head.epoch_state`` writes; a file lacking one is not resumable.
KEYS = ("epoch", "step", "optimizer", "models", "history", "rng")


class EpochCheckpoint:
    """The checkpoint file at ``path``: :meth:`load`, :meth:`save` after each epoch, :meth:`discard`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        """The saved state (tensors on the CPU), or None when there is none; an unreadable or
        foreign file is warned about (``SppdetWarning``, one line) and also gives None."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            problem = None if isinstance(state, dict) and state.get("kind") == KIND and all(
                key in state for key in KEYS) else "not an sppdet epoch checkpoint"
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean "unusable"
            problem = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        if problem is None:
            return state
        warnings.warn(f"{self.path}: unreadable checkpoint ({problem}); training starts from scratch",
                      SppdetWarning, stacklevel=2)
        return None

    def save(self, state: dict) -> None:
        """Write ``state`` (an ``epoch_state``) atomically, replacing the previous epoch's."""
        save_torch_file(self.path, {**state, "kind": KIND})

    def discard(self) -> None:
        """Delete the checkpoint (the final output is saved, or was found complete). Nothing is
        touched when there is none, so a fully cached run works in a read-only work directory
        (unlinking a missing file there fails with EROFS, not ENOENT)."""
        if self.path.exists():
            self.path.unlink(missing_ok=True)
