"""Streaming inference over many image files: parallel decoding, batched
encoding and scoring, per-image failures isolated.

Decoding runs in ``torch.utils.data.DataLoader`` worker processes (one of the
few places where the main process would otherwise wait); each worker returns
either a decoded ``[3, H, W]`` uint8 tensor or the reason it could not decode
the file. The main process builds crops and encodes on the model's device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .classifier import LaZSLClassifier, Prediction


@dataclass
class Item:
    """One image's outcome: ``prediction`` or ``error`` (a one-line reason)."""

    index: int
    key: str
    filepath: str
    prediction: Prediction | None = None
    error: str | None = None


class _Files(Dataset):
    def __init__(self, filepaths: Sequence[str], max_pixels: int | None):
        self.filepaths = list(filepaths)
        self.max_pixels = max_pixels

    def __len__(self):
        return len(self.filepaths)

    def __getitem__(self, i):
        from .imageio import load_image_tensor

        path = self.filepaths[i]
        try:
            t, info = load_image_tensor(path, max_pixels=self.max_pixels)
            return i, t, info, None
        except Exception as e:  # reported per sample, never fatal
            return i, None, None, _reason(e)


def _reason(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _collate(batch):
    return batch


def default_num_workers() -> int:
    """Decoding workers: up to 4, leaving a core for the main process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def iter_predictions(classifier: LaZSLClassifier, filepaths: Sequence[str],
                     keys: Sequence[str] | None = None, *, batch_size: int | None = None,
                     num_workers: int | None = None, max_pixels: int | None = None,
                     on_stage: Callable[[str], None] | None = None) -> Iterator[list[Item]]:
    """Classify files in batches, yielding one list of :class:`Item` per batch.

    Args:
        classifier: a built :class:`LaZSLClassifier`.
        filepaths: image files.
        keys: crop-seed keys (default: the file paths).
        batch_size: images per batch (default: ``classifier.batch_size``).
        num_workers: decoding processes (default :func:`default_num_workers`; 0 = in process).
        max_pixels: decode larger images downscaled to this many pixels.
        on_stage: called with ``"decoding"``, ``"encoding"`` or ``"scoring"``.

    Yields:
        lists of :class:`Item`, in input order within each batch. A file that
        cannot be decoded, or an image whose prediction fails, gets ``error``
        and the others in its batch are still predicted.
    """
    keys = list(keys) if keys is not None else list(filepaths)
    batch_size = batch_size or classifier.batch_size
    num_workers = default_num_workers() if num_workers is None else num_workers
    loader = DataLoader(_Files(filepaths, max_pixels), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate,
                        persistent_workers=False,
                        prefetch_factor=2 if num_workers > 0 else None)
    stage = on_stage or (lambda s: None)
    stage("decoding")
    for batch in loader:
        items, ok = [], []
        for i, t, info, err in batch:
            it = Item(index=i, key=str(keys[i]), filepath=filepaths[i], error=err)
            items.append(it)
            if err is None:
                ok.append((it, t, info))
        if ok:
            stage("encoding")
            _predict(classifier, ok)
        stage("decoding")
        yield items


def _predict(classifier: LaZSLClassifier, ok) -> None:
    def run(group):
        preds = classifier.predict_tensors(
            [t for _, t, _ in group], [it.key for it, _, _ in group],
            sizes=[tuple(info["original_size"]) for _, _, info in group],
            scales=[float(info["scale"]) for _, _, info in group])
        for (it, _, _), p in zip(group, preds):
            it.prediction = p

    try:
        run(ok)
    except (RuntimeError, ValueError) as e:
        if isinstance(e, torch.cuda.OutOfMemoryError) or len(ok) == 1:
            if len(ok) == 1:
                ok[0][0].error = _reason(e)
                return
            raise
        for one in ok:  # isolate the failing image(s)
            try:
                run([one])
            except (RuntimeError, ValueError) as e1:
                one[0].error = _reason(e1)
