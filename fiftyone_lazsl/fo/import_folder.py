"""A FiftyOne dataset from ``DIR/<class>/<image>`` folders, images only.

FiftyOne's ``ImageClassificationDirectoryTree`` importer takes every file of
the class folders and decides the media type from the file extension: a
``README.txt``, ``Thumbs.db``, a PDF or a video in a class folder makes it
fail with ``MediaTypeError``, an extension-less JPEG becomes media type
``unknown``, and a folder of non-images gives a dataset of unknown media type.
:func:`import_image_folder` instead decides *by content*: a file is an image
when its header opens with a PIL format plugin
(:func:`fiftyone_lazsl.core.imageio.probe_image`: regular files only, never
blocks on a FIFO, header only, so it is fast). Everything else is skipped and
reported with the reason; samples are added with ``media_type="image"``.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import fiftyone as fo
import fiftyone.core.odm.database as fodb
import fiftyone.core.utils as fou

from fiftyone_lazsl.core.imageio import probe_image
from fiftyone_lazsl.errors import ImageLoadError, UserError

__all__ = ["ImportResult", "scan_image_folder", "import_image_folder", "check_new_dataset_name"]


@dataclass
class ImportResult:
    """What :func:`import_image_folder` did.

    Attributes:
        dataset: the created ``fo.Dataset`` (persistent).
        num_images: samples added.
        classes: class (sub-folder) names that got at least one image, sorted.
        skipped: ``[(path, reason)]`` for every file or folder not imported.
    """

    dataset: Any
    num_images: int = 0
    classes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def skipped_summary(self, limit: int = 10) -> list[str]:
        """One line per skipped entry (at most ``limit``, then a count)."""
        lines = [f"skipped {p}: {r}" for p, r in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"... and {len(self.skipped) - limit} more skipped")
        return lines


def _why_not_image(path: str) -> str | None:
    """None if ``path`` is an image file (by content), else the reason."""
    if os.path.basename(path).startswith("."):
        return "hidden file"
    try:
        probe_image(path)
    except ImageLoadError as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 -- a corrupt header of any kind
        return f"not a readable image ({type(e).__name__})"
    return None


def _entry_kind(entry: os.DirEntry) -> str | None:
    """``"dir"`` for a folder (links followed), None for anything else, or
    the reason an entry cannot be followed (a symbolic-link loop, a dangling
    link, no permission)."""
    try:
        return "dir" if entry.is_dir() else None
    except OSError as e:  # ELOOP (a link loop), EACCES...
        return f"cannot follow ({e.strerror or e})"


def scan_image_folder(
    directory: str | os.PathLike,
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Images of a class-folder tree, by content.

    Args:
        directory: folder with one sub-folder per class; images directly in
            the class folders (one level, like FiftyOne's
            ``ImageClassificationDirectoryTree``).

    Returns:
        ``(images, skipped)``: ``[(path, class)]`` sorted by class then file
        name, and ``[(path, reason)]`` for files that are not images (text,
        PDF, video, ``Thumbs.db``, hidden files, FIFOs, empty or corrupt
        files), files outside class folders, and nested folders.

    Raises:
        UserError: ``directory`` is not a folder.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserError(f"folder not found: {directory}")
    images: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped.append((entry.path, "hidden"))
            continue
        kind = _entry_kind(entry)
        if kind != "dir":
            skipped.append((entry.path, kind or "not in a class sub-folder"))
            continue
        try:
            files = sorted(os.scandir(entry.path), key=lambda e: e.name)
        except OSError as e:
            skipped.append((entry.path, f"unreadable folder ({e.strerror or e})"))
            continue
        for f in files:
            kind = _entry_kind(f)
            if kind not in ("dir", None):
                skipped.append((f.path, kind))
                continue
            if kind == "dir":
                skipped.append(
                    (f.path, "nested folder (images must sit directly in the class folder)")
                )
                continue
            why = _why_not_image(f.path)
            if why:
                skipped.append((f.path, why))
            else:
                images.append((os.path.abspath(f.path), entry.name))
    return images, skipped


def import_image_folder(
    directory: str | os.PathLike,
    dataset_name: str,
    *,
    overwrite: bool = False,
    label_field: str = "ground_truth",
    compute_metadata: bool = True,
) -> ImportResult:
    """Create a persistent image dataset from ``DIR/<class>/<image>`` folders.

    Each image gets ``fo.Classification(label=<sub-folder name>)`` in
    ``label_field``; non-images are skipped with a reason (see
    :func:`scan_image_folder`). The dataset's media type is always ``image``.

    Args:
        directory: the folder tree.
        dataset_name: name of the new dataset.
        overwrite: replace an existing dataset of that name. The new dataset
            is built under a temporary name and swapped in once complete, so
            an interrupted import leaves the old dataset as it was.
        label_field: ground-truth field.
        compute_metadata: fill ``metadata`` (width, height, size) from the
            headers, as ``dataset.compute_metadata()`` does.

    Returns:
        an :class:`ImportResult`.

    Raises:
        UserError: the folder does not exist, holds no image, the dataset
            exists and ``overwrite`` is False, or FiftyOne cannot use the name
            (:func:`check_new_dataset_name`); all checked before anything is
            created or deleted.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise UserError(f"folder not found: {directory}")
    check_new_dataset_name(dataset_name, replace=overwrite)
    if fo.dataset_exists(dataset_name) and not overwrite:
        raise UserError(f"dataset {dataset_name!r} already exists (use --overwrite to replace it)")
    images, skipped = scan_image_folder(directory)
    if not images:
        why = f"; skipped {len(skipped)} non-image entries" if skipped else ""
        raise UserError(
            f"no images found under {directory} (expected one sub-folder per class "
            f"holding image files{why})"
        )
    # Built under a temporary name and swapped in at the end: an interrupted
    # import (Ctrl-C, a crash) leaves the old dataset as it was.
    tmp = f"{dataset_name}-importing-{uuid.uuid4().hex[:12]}"
    ds = fo.Dataset(tmp)  # not persistent until complete: FiftyOne cleans it up if we die
    try:
        ds.add_samples(
            [
                fo.Sample(
                    filepath=p, media_type="image", **{label_field: fo.Classification(label=c)}
                )
                for p, c in images
            ]
        )
        if compute_metadata:
            ds.compute_metadata()
        ds.persistent = True
        _swap_in(ds, dataset_name)
    except BaseException:
        if ds.name == tmp and fo.dataset_exists(tmp):
            fo.delete_dataset(tmp)
        raise
    return ImportResult(
        dataset=ds, num_images=len(images), classes=sorted({c for _, c in images}), skipped=skipped
    )


def _swap_in(ds: Any, name: str) -> None:
    """Delete the dataset ``name`` (if any) and rename ``ds`` to it, with
    Ctrl-C held back for those two steps (a signal arriving then is delivered
    right after)."""
    block = threading.current_thread() is threading.main_thread()
    if block:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        ds.name = name
    finally:
        if block:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def check_new_dataset_name(name: Any, *, replace: bool = False) -> str:
    """Check, before anything is created, that FiftyOne can create a dataset
    called ``name``: its URL slug (``fiftyone.core.utils.to_slug``) is not
    empty and no *other* dataset has that slug (``"b slug"`` and ``"b-slug"``
    share ``b-slug``). A dataset of exactly that name is fine when
    ``replace`` (it is the one replaced).

    Returns:
        the slug.

    Raises:
        UserError: one line naming the dataset and the clash.
    """
    if not isinstance(name, str) or not name.strip():
        raise UserError("the dataset name must be a non-empty string")
    try:
        slug = fou.to_slug(name)
    except ValueError:
        raise UserError(
            f"dataset name {name!r} cannot be used: FiftyOne needs a name whose "
            "URL slug is not empty (use some ASCII letters or digits)"
        ) from None
    other = fodb.get_db_conn().datasets.find_one(
        {"slug": slug, "name": {"$ne": name}}, {"name": True}
    )
    if other is not None:
        raise UserError(
            f"dataset name {name!r} is not available: its URL slug {slug!r} is that "
            f"of dataset {other['name']!r}; choose another name"
        )
    if fo.dataset_exists(name) and not replace:
        raise UserError(f"dataset {name!r} already exists (use --overwrite to replace it)")
    return slug
