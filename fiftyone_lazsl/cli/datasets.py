"""``import-folder`` and ``app`` sub-commands (thin shells over the library:
:mod:`fiftyone_lazsl.fo.import_folder`)."""

from __future__ import annotations

import logging
import sys

from fiftyone_lazsl.cli.argtypes import int_range

logger = logging.getLogger(__name__)


def load_dataset(name: str):
    """:func:`fiftyone_lazsl.fo.store.load_dataset` (imported on use, so
    building the CLI parser does not import FiftyOne)."""
    from fiftyone_lazsl.fo.store import load_dataset as _load

    return _load(name)


def import_folder(
    directory: str, dataset_name: str, *, overwrite: bool = False, label_field: str = "ground_truth"
):
    """Create a persistent dataset from a folder tree with one sub-folder per
    class; images only, by content (see
    :func:`fiftyone_lazsl.fo.import_folder.import_image_folder`, which also
    returns what was skipped). Kept for backward compatibility.

    Returns:
        the ``fo.Dataset``.

    Raises:
        UserError: the folder does not exist, has no images, or the dataset
            exists and ``overwrite`` is False.
    """
    from fiftyone_lazsl.fo.import_folder import import_image_folder

    res = import_image_folder(directory, dataset_name, overwrite=overwrite, label_field=label_field)
    for line in res.skipped_summary():
        logger.info(line)
    return res.dataset


def _import_folder(args) -> int:
    from fiftyone_lazsl.fo.import_folder import import_image_folder

    res = import_image_folder(args.directory, args.dataset, overwrite=args.overwrite)
    for line in res.skipped_summary(limit=20):
        print(line, file=sys.stderr)
    msg = (
        f"dataset {res.dataset.name!r}: {res.num_images} images in {len(res.classes)} classes "
        "(field 'ground_truth')"
    )
    if res.skipped:
        msg += f"; {len(res.skipped)} non-image entries skipped"
    print(msg)
    return 0


def _app(args) -> int:
    import fiftyone as fo

    ds = load_dataset(args.dataset)
    session = fo.launch_app(ds, port=args.port, address=args.address, remote=args.remote)
    if args.wait:
        print(f"App: {session.url}  (Ctrl+C to stop)")
        session.wait(-1)
    else:
        # The server lives only as long as this process: say so instead of
        # printing a URL that is gone when the prompt returns.
        print(
            f"App server checked on port {args.port} and stopped (--no-wait); run without "
            "--no-wait to keep it serving, or open the dataset from Python with "
            "fo.launch_app()"
        )
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "import-folder",
        help="create a dataset from DIR/<class>/<image> folders (images only, detected by content)",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=_import_folder)

    p = sub.add_parser("app", help="open the FiftyOne App on a dataset")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--port", type=int_range(1, 65535), default=5151)
    p.add_argument("--address", default="localhost")
    p.add_argument("--remote", action="store_true", help="serve without opening a browser")
    p.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="check that the App starts, then stop it and return",
    )
    p.set_defaults(func=_app)
