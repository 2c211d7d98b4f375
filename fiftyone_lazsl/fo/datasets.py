"""Datasets by name, and the dataset behind a view (public FiftyOne API only)."""

from __future__ import annotations

import fiftyone as fo
from fiftyone.core.clips import ClipsView
from fiftyone.core.patches import EvaluationPatchesView, PatchesView
from fiftyone.core.video import FramesView

from fiftyone_lazsl.errors import ConfigError, DatasetNotFoundError

__all__ = ["load_dataset", "dataset_of", "check_sample_view"]


def load_dataset(name: str) -> fo.Dataset:
    """Load a FiftyOne dataset by name (``fo.load_dataset``).

    Raises:
        DatasetNotFoundError: no dataset of that name (the message lists the
            existing datasets, or says there are none).
    """
    if not name or name not in fo.list_datasets():
        existing = fo.list_datasets()
        hint = (
            ("existing datasets: " + ", ".join(existing)) if existing else "there are no datasets"
        )
        raise DatasetNotFoundError(f"no FiftyOne dataset named {name!r}; {hint}")
    return fo.load_dataset(name)


def dataset_of(samples: fo.core.collections.SampleCollection) -> fo.Dataset:
    """The dataset a dataset or view belongs to (for a patches view: the dataset
    of the patches' source samples).

    Uses only public API: a view's ``dataset_name`` and ``fo.load_dataset``,
    which returns the same in-process ``Dataset`` object (FiftyOne keeps one
    instance per dataset).

    Raises:
        TypeError: ``samples`` is not a FiftyOne dataset or view.
    """
    if isinstance(samples, fo.Dataset):
        return samples
    if isinstance(samples, fo.DatasetView):
        return fo.load_dataset(samples.dataset_name)
    raise TypeError(f"expected a FiftyOne dataset or view, got {type(samples).__name__}")


def check_sample_view(samples: fo.core.collections.SampleCollection) -> None:
    """Refuse a view whose samples are not the dataset's images: a patches
    view (``to_patches``, ``to_evaluation_patches``), a frames or clips view.
    A LaZSL run classifies whole images and writes to their samples; call it
    on the dataset or a view that filters its samples (``match``, ``select``,
    ``match_tags``...). Checked before anything is written.

    Raises:
        ConfigError: naming the kind of view.
        TypeError: ``samples`` is not a FiftyOne dataset or view.
    """
    kinds = (
        ((PatchesView, EvaluationPatchesView), "a patches view"),
        (FramesView, "a frames view"),
        (ClipsView, "a clips view"),
    )
    for cls, what in kinds:
        if isinstance(samples, cls):
            raise ConfigError(
                f"{what} of dataset {samples.dataset_name!r} cannot be classified: "
                "LaZSL classifies whole images; give the dataset or a view of "
                "its samples (e.g. match, select, match_tags)"
            )
    dataset_of(samples)
