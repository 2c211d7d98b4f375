"""Streaming inference over many image files: parallel decoding, batched
encoding and scoring, per-image failures isolated.

Decoding runs in ``torch.utils.data.DataLoader`` worker processes. Each
worker also makes the CPU part of the image's visual set
(:meth:`fiftyone_lazsl.core.crops.VisualSetSpec.prepare`: with
``crop_backend="pil"`` the global view and every crop through the model's own
preprocessing, as ``[1 + N, S, S, 3]`` uint8; with ``"device"`` only the
decoded ``[H, W, 3]`` uint8 image; with ``"tensor"`` the global view and the
decoded image), or returns the reason it could not decode the file.
The main process normalises the uint8 views on the model's device (for
``"device"`` it first resamples every view of the batch there, for
``"tensor"`` the crops), encodes and scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fiftyone_lazsl.core import imageio
from fiftyone_lazsl.core.classifier import LaZSLClassifier, Prediction
from fiftyone_lazsl.core.crops import PreparedViews, VisualSetSpec
from fiftyone_lazsl.core.imageio import ORIGINAL_SIZE_KEY, SCALE_KEY, read_deadline


@dataclass
class Item:
    """One image's outcome: ``prediction`` or ``error`` (a one-line reason)."""

    index: int
    key: str
    filepath: str
    prediction: Prediction | None = None
    error: str | None = None


class _Files(Dataset):
    """Decode file ``i`` and prepare its visual set (in a worker process).

    Boxes are drawn on the decoded grid (after any ``max_pixels`` shrink) from
    ``(spec.seed, keys[i])``; predictions map them back to the original size.
    """

    def __init__(
        self,
        filepaths: Sequence[str],
        keys: Sequence[str],
        spec: VisualSetSpec,
        max_pixels: int | None,
    ):
        self.filepaths = list(filepaths)
        self.keys = [str(k) for k in keys]
        self.spec = spec
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.filepaths)

    def __getitem__(self, i: int) -> tuple[int, PreparedViews | None, dict | None, str | None]:
        path = self.filepaths[i]
        try:
            # a stalled read or decode fails this sample only (see read_deadline)
            with read_deadline(path):
                # (looked up at each call, so a test can stand in a stalled read)
                im = imageio.load_image(path, max_pixels=self.max_pixels)
            info = {"original_size": im.info[ORIGINAL_SIZE_KEY], "scale": im.info[SCALE_KEY]}
            return i, self.spec.prepare(im, self.keys[i]), info, None
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


def iter_predictions(
    classifier: LaZSLClassifier,
    filepaths: Sequence[str],
    keys: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_pixels: int | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> Iterator[list[Item]]:
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
        cannot be decoded, an image whose prediction fails, or one whose
        scores are not finite (NaN/inf), gets ``error`` and no prediction; the
        others in its batch are still predicted. Only a CUDA out-of-memory
        error of a whole batch is raised (lower the batch size).
    """
    keys = list(keys) if keys is not None else list(filepaths)
    batch_size = batch_size or classifier.batch_size
    num_workers = default_num_workers() if num_workers is None else num_workers
    files = _Files(filepaths, keys, classifier.visual_spec, max_pixels)
    loader = DataLoader(
        files,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=2 if num_workers > 0 else None,
    )
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
        preds = classifier.predict_prepared(
            [t for _, t, _ in group],
            sizes=[tuple(info["original_size"]) for _, _, info in group],
            scales=[float(info["scale"]) for _, _, info in group],
        )
        for (it, _, _), p in zip(group, preds):
            bad = non_finite(p)
            if bad:
                it.prediction, it.error = None, f"non-finite scores ({bad}); nothing written"
            else:
                it.prediction = p

    try:
        run(ok)
    except Exception as e:  # noqa: BLE001 -- reported per sample, never fatal
        if isinstance(e, torch.cuda.OutOfMemoryError) and len(ok) > 1:
            raise  # the batch is too large for the device: the user must lower it
        if len(ok) == 1:
            ok[0][0].prediction, ok[0][0].error = None, _reason(e)
            return
        for one in ok:  # isolate the failing image(s)
            one[0].prediction = None
            try:
                run([one])
            except Exception as e1:  # noqa: BLE001
                one[0].prediction, one[0].error = None, _reason(e1)


def non_finite(p: Prediction) -> str | None:
    """Which of a prediction's numbers are NaN or infinite (None if all finite):
    such values must never reach the dataset."""
    import numpy as np

    checks = [("logits", p.logits), ("probabilities", p.probs), ("scores", p.scores)]
    if p.crops is not None:
        checks += [
            ("crop mass", p.crops.mass),
            ("crop similarity", p.crops.similarity),
            ("crop share", p.crops.share),
        ]
    for a in p.attribute_scores or []:
        checks.append(("attribute scores", a))
    for name, v in checks:
        if v is not None and not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
            return name
    return None
