"""FiftyOne remote zoo model source: LaZSL (ICCV 2025) zero-shot classifiers.

This folder (``manifest.json`` + this file) is what
``fiftyone.zoo.register_zoo_model_source("https://github.com/fiftyone-lazsl/fiftyone-lazsl")``
copies under ``fo.config.model_zoo_dir``; FiftyOne then calls the functions
below. They are a thin shell over :mod:`fiftyone_lazsl.fo.zoo_model`, so the
``fiftyone-lazsl`` package must be installed (the manifest lists it in
``requirements``, which ``load_zoo_model`` checks).

    import fiftyone.zoo as foz
    foz.register_zoo_model_source("https://github.com/fiftyone-lazsl/fiftyone-lazsl")
    model = foz.load_zoo_model("lazsl-vit-b-32", attribute_set="cub")
    dataset.apply_model(model, label_field="lazsl_zoo")
"""

try:
    from fiftyone_lazsl.fo import zoo_model as _zoo
except ImportError as e:  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "the LaZSL zoo models need the fiftyone-lazsl package: install it with "
        "`pip install git+https://github.com/fiftyone-lazsl/fiftyone-lazsl` (or `pip install -e` "
        f"on a checkout); import failed with: {e}"
    ) from e


def download_model(model_name, model_path):
    """Downloads the open_clip weights of ``model_name`` to ``model_path``.

    Args:
        model_name: the zoo name (``base_name`` in ``manifest.json``)
        model_path: the file to write (``base_filename`` in this folder)
    """
    _zoo.download_model(model_name, model_path)


def load_model(model_name, model_path, **kwargs):
    """Loads the LaZSL model.

    Args:
        model_name: the zoo name
        model_path: the weights file written by :func:`download_model`
        **kwargs: ``attribute_set`` (required), ``top_k_crops``,
            ``top_attributes`` and any ``LaZSLConfig`` field (``pretrained``,
            ``method``, ``n_crops``, ``seed``, ``device``...)

    Returns:
        a :class:`fiftyone.core.models.Model`
    """
    return _zoo.load_model(model_name, model_path, **kwargs)


def resolve_input(model_name, ctx):
    """The parameters the "Apply zoo model" operator asks for.

    Returns:
        a ``fiftyone.operators.types.Property``
    """
    return _zoo.resolve_input(model_name, ctx)


def parse_parameters(model_name, ctx, params):
    """Turns the operator's form values into ``load_zoo_model`` keyword
    arguments, in place."""
    _zoo.parse_parameters(model_name, ctx, params)
