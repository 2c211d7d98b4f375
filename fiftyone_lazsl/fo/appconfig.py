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

from typing import Any, Sequence


def hide_until_shown(dataset: Any, paths: Sequence[str]) -> bool:
    """Leave ``paths`` out of ``dataset``'s default active fields.

    Nothing changes when the dataset's App config already lists its active
    fields explicitly (``exclude=False``: the owner chose what is shown, and
    new fields are not among them) or already excludes the paths.

    Args:
        dataset: a ``fiftyone.core.dataset.Dataset``.
        paths: top-level field names (e.g. ``["lazsl_crops"]``).

    Returns:
        whether the App config was changed (and saved).
    """
    import fiftyone as fo

    cfg = dataset.app_config
    active = cfg.active_fields
    if active is None:
        active = fo.core.odm.dataset.ActiveFields(exclude=True, paths=[])
    elif not active.exclude:
        return False
    missing = [p for p in paths if p not in active.paths]
    if not missing:
        return False
    active.paths = list(active.paths) + missing
    cfg.active_fields = active
    dataset.save()
    return True
