"""Label fields of a FiftyOne dataset or view: the one scanner of fields that
hold class labels, their label paths, and their distinct classes.

Every "which fields hold class labels?" question of the library, the CLI and the
operators goes through :func:`label_fields` (ground-truth dropdowns, the
attribute-set import, ``attributes generate --field``, run validation).
Only public FiftyOne API: ``get_field_schema`` and the label classes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

import fiftyone as fo

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classnames import classes_from_list
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.runs import list_lazsl_fields

__all__ = [
    "LABEL_TYPES",
    "CLASSIFICATION_TYPES",
    "label_fields",
    "label_path",
    "classes_from_field",
    "ground_truth_fields",
    "validate_for_field",
]

#: Label types with one ``label`` per field value, and the path of their labels.
_SINGLE = (fo.Classification, fo.Detection, fo.Polyline, fo.Keypoint)
#: Label-list types and the attribute holding their list (FiftyOne's label lists).
_LISTS = {
    fo.Classifications: "classifications",
    fo.Detections: "detections",
    fo.Polylines: "polylines",
    fo.Keypoints: "keypoints",
}
#: Every label type whose values carry class labels.
LABEL_TYPES = _SINGLE + tuple(_LISTS)
#: The classification types (what a LaZSL run validates and an import offers).
CLASSIFICATION_TYPES = (fo.Classification, fo.Classifications)


def _path(name: str, doc: type) -> str | None:
    if doc in _LISTS:
        return f"{name}.{_LISTS[doc]}.label"
    if doc in _SINGLE:
        return f"{name}.label"
    return None


def label_fields(
    samples: fo.core.collections.SampleCollection,
    *,
    types: Iterable[type] = LABEL_TYPES,
    strings: bool = True,
    exclude: Iterable[str] = (),
) -> OrderedDict[str, str]:
    """``{field: path of its class labels}`` for every top-level field of
    ``samples`` that holds class labels, sorted by field name.

    Paths: ``field.label`` for Classification/Detection/Polyline/Keypoint,
    ``field.<list>.label`` for Classifications/Detections/Polylines/Keypoints,
    ``field`` for a string field (other than ``filepath`` and ``id``).

    Args:
        samples: a FiftyOne dataset or view.
        types: label types to accept (default :data:`LABEL_TYPES`;
            :data:`CLASSIFICATION_TYPES` for classifications only).
        strings: also accept string fields.
        exclude: field names to leave out (e.g. LaZSL output fields).
    """
    wanted = tuple(types)
    skip = set(exclude)
    usable: OrderedDict[str, str] = OrderedDict()
    schema = samples.get_field_schema()
    for name in sorted(schema):
        if name in skip:
            continue
        ft = schema[name]
        if strings and isinstance(ft, fo.StringField) and name not in ("filepath", "id"):
            usable[name] = name
        elif isinstance(ft, fo.EmbeddedDocumentField) and ft.document_type in wanted:
            path = _path(name, ft.document_type)
            if path:
                usable[name] = path
    return usable


def _dataset_name(samples: fo.core.collections.SampleCollection) -> str:
    return samples.name if isinstance(samples, fo.Dataset) else samples.dataset_name


def label_path(
    samples: fo.core.collections.SampleCollection,
    field: str,
    *,
    types: Iterable[type] = LABEL_TYPES,
    strings: bool = True,
) -> str:
    """The path of the class labels in ``field`` (see :func:`label_fields`).

    Raises:
        UserError: no such field, or it holds no class labels (the message lists
            the fields that do).
    """
    usable = label_fields(samples, types=types, strings=strings)
    if field not in usable:
        exists = field in samples.get_field_schema(flat=True)
        what = "holds no class labels" if exists else "does not exist"
        raise UserError(
            f"field {field!r} {what} on dataset {_dataset_name(samples)!r}; label fields: "
            + (", ".join(usable) or "none")
        )
    return usable[field]


def classes_from_field(samples: fo.core.collections.SampleCollection, field: str) -> list[str]:
    """The distinct class labels of a dataset (or view) field, sorted.

    Args:
        samples: a FiftyOne dataset or view.
        field: a label field (Classification(s), Detection(s), ...) or a string field.

    Raises:
        UserError: the field is not a label field, or holds no label.
    """
    path = label_path(samples, field)
    values = [v for v in samples.distinct(path) if v is not None and str(v).strip()]
    if not values:
        raise UserError(f"no class names in field {field!r}")
    return classes_from_list(sorted(values))


def ground_truth_fields(samples: fo.core.collections.SampleCollection) -> list[str]:
    """Top-level ``fo.Classification`` fields of ``samples`` that are not LaZSL
    outputs (candidates for a ground-truth dropdown), sorted by name."""
    return list(
        label_fields(
            samples, types=(fo.Classification,), strings=False, exclude=list_lazsl_fields(samples)
        )
    )


def validate_for_field(
    samples: fo.core.collections.SampleCollection, attribute_set: AttributeSet, label_field: str
) -> list[str]:
    """Check that every label of a classification field has attributes in the set.

    Args:
        samples: the dataset or view whose labels are checked.
        attribute_set: the set.
        label_field: a ``Classification`` (or ``Classifications``) field.

    Returns:
        the field's distinct labels, sorted.

    Raises:
        UserError: the field does not exist or is not a classification field
            (the message lists the classification fields).
        AttributeSetError: labels without attributes in the set (all listed).
    """
    usable = label_fields(samples, types=CLASSIFICATION_TYPES, strings=False)
    if label_field not in usable:
        what = (
            "does not exist"
            if label_field not in samples.get_field_schema(flat=True)
            else "is not a Classification field"
        )
        raise UserError(
            f"label field {label_field!r} {what} on dataset {_dataset_name(samples)!r}; "
            "classification fields: " + (", ".join(usable) or "none")
        )
    labels = sorted(v for v in samples.distinct(usable[label_field]) if v is not None)
    attribute_set.validate_classes(labels)
    return labels
