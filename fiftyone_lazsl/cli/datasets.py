"""``import-folder`` and ``app`` sub-commands."""

from __future__ import annotations

import os

from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.store import load_dataset


def import_folder(directory: str, dataset_name: str, *, overwrite: bool = False,
                  label_field: str = "ground_truth"):
    """Create a persistent dataset from a folder tree with one sub-folder per class.

    Uses FiftyOne's ``ImageClassificationDirectoryTree`` importer: each image gets
    ``fo.Classification(label=<sub-folder name>)`` in ``label_field``.

    Raises:
        UserError: the folder does not exist, has no images, or the dataset exists
            and ``overwrite`` is False.
    """
    import fiftyone as fo

    if not os.path.isdir(directory):
        raise UserError(f"folder not found: {directory}")
    if fo.dataset_exists(dataset_name) and not overwrite:
        raise UserError(f"dataset {dataset_name!r} already exists (use --overwrite to replace it)")
    ds = fo.Dataset.from_dir(dataset_dir=directory,
                             dataset_type=fo.types.ImageClassificationDirectoryTree,
                             label_field=label_field, name=dataset_name, overwrite=overwrite)
    if len(ds) == 0:
        ds.delete()
        raise UserError(f"no images found under {directory} (expected one sub-folder per class)")
    ds.persistent = True
    ds.compute_metadata()
    return ds


def _import_folder(args) -> int:
    ds = import_folder(args.directory, args.dataset, overwrite=args.overwrite)
    n_cls = len(ds.distinct("ground_truth.label"))
    print(f"dataset {ds.name!r}: {len(ds)} images in {n_cls} classes (field 'ground_truth')")
    return 0


def _app(args) -> int:
    import fiftyone as fo

    ds = load_dataset(args.dataset)
    session = fo.launch_app(ds, port=args.port, address=args.address, remote=args.remote)
    print(f"App: {session.url}  (Ctrl+C to stop)")
    if args.wait:
        session.wait(-1)
    return 0


def register(sub) -> None:
    p = sub.add_parser("import-folder", help="create a dataset from DIR/<class>/<image> folders")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(func=_import_folder)

    p = sub.add_parser("app", help="open the FiftyOne App on a dataset")
    p.add_argument("--dataset", required=True, metavar="NAME")
    p.add_argument("--port", type=int, default=5151)
    p.add_argument("--address", default="localhost")
    p.add_argument("--remote", action="store_true", help="serve without opening a browser")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="return at once instead of serving until interrupted")
    p.set_defaults(func=_app)
