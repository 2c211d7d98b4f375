"""App defaults a curator would choose for a dataset LaZSL wrote to.

A run's crop detections (``F_crops``) are evidence for one sample at a time:
on every tile of the grid they are clutter. :func:`hide_until_shown` leaves
them out of the dataset's default active fields (FiftyOne's
``dataset.app_config.active_fields``, the sidebar checkboxes' default, see
https://docs.voxel51.com/user_guide/app.html#dataset-app-config), so the grid
shows the photos and prediction pills; the sidebar checkbox, or the
explanations panel when a sample is opened, shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import fiftyone as fo


def hide_until_shown(dataset: Any, paths: Sequence[str], show: Sequence[str] = ()) -> bool:
    """Leave ``paths`` out of ``dataset``'s default active fields, and put ``show`` in.

    FiftyOne's own default (``fo.DatasetAppConfig.default_active_fields``: the
    dataset's label fields, an include list; primitives such as ``filepath``
    or ``metadata`` are not shown as pills) is the starting point when the
    dataset has no App config yet. An include list (FiftyOne's form, or one an
    earlier run wrote) gets ``show`` added and ``paths`` removed; an
    exclusion list (``exclude=True``) gets ``paths`` added.

    Args:
        dataset: a ``fiftyone.core.dataset.Dataset``.
        paths: top-level field names to hide (e.g. ``["lazsl_crops"]``).
        show: top-level field names to show (e.g. the run's prediction field).

    Returns:
        whether the App config was changed (and saved).
    """
    cfg = dataset.app_config
    active = cfg.active_fields
    if active is None:
        active = fo.DatasetAppConfig.default_active_fields(dataset)
    current = list(active.paths or [])
    if active.exclude:
        wanted = current + [p for p in paths if p not in current]
        wanted = [p for p in wanted if p not in show]
    else:
        wanted = [p for p in current if p not in paths]
        wanted += [p for p in show if p not in wanted]
    if cfg.active_fields is not None and wanted == current:
        return False
    active.paths = wanted
    cfg.active_fields = active
    dataset.save()
    return True
