"""Class names from lists, files and dataset fields; readable names."""

import json

import fiftyone as fo
import pytest

from fiftyone_lazsl.core.classnames import (
    classes_from_file,
    classes_from_list,
    readable_name,
    readable_names,
)
from fiftyone_lazsl.errors import UserError
from fiftyone_lazsl.fo.fields import classes_from_field, label_path


def test_readable_name_rule_matches_the_published_cub_keys(shared_data):
    labels = classes_from_file(shared_data / "cub_classes.txt")
    assert len(labels) == 200 and labels[0] == "001.Black_footed_Albatross"
    keys = list(json.loads((shared_data / "attribute_sets" / "cub.json").read_text()))
    assert list(readable_names(labels).values()) == keys


def test_readable_name_cases():
    assert readable_name("034.Gray_crowned_Rosy_Finch") == "Gray-crowned-Rosy Finch"
    assert readable_name("009.Brewer_Blackbird") == "Brewer Blackbird"
    assert readable_name("017.Cardinal") == "Cardinal"
    assert readable_name("golden_retriever", style="spaces") == "golden retriever"
    assert readable_name("Maine Coon") == "Maine Coon"
    assert readable_name("3D_printer") == "3D printer"
    with pytest.raises(ValueError, match="unknown readable-name style"):
        readable_name("x", style="title")
    with pytest.raises(UserError, match="both read as 'Cardinal'"):
        readable_names(["001.Cardinal", "002.Cardinal"])


def test_lists_and_files(tmp_path):
    assert classes_from_list([" Cardinal ", "Blue  Jay", "", None, "Cardinal"]) == [
        "Cardinal",
        "Blue Jay",
    ]
    with pytest.raises(UserError, match="no class names"):
        classes_from_list(["", " "])
    f = tmp_path / "classes.txt"
    f.write_text("# birds\nCardinal\n\n2 headed snake\nBlue Jay\n")
    assert classes_from_file(f) == ["Cardinal", "2 headed snake", "Blue Jay"]
    g = tmp_path / "numbered.txt"
    g.write_text("1 Cardinal\n2 Blue Jay\n")
    assert classes_from_file(g) == ["Cardinal", "Blue Jay"]
    with pytest.raises(UserError, match="cannot read class list"):
        classes_from_file(tmp_path / "missing.txt")


def test_classes_from_dataset_fields():
    ds = fo.Dataset()
    ds.add_samples(
        [
            fo.Sample(
                filepath=f"/tmp/{i}.jpg",
                gt=fo.Classification(label=lab),
                note=lab,
                dets=fo.Detections(detections=[fo.Detection(label=lab.upper())]),
            )
            for i, lab in enumerate(
                ["002.Laysan_Albatross", "001.Black_footed_Albatross", "002.Laysan_Albatross"]
            )
        ]
    )
    ds.add_sample(fo.Sample(filepath="/tmp/none.jpg"))
    try:
        assert classes_from_field(ds, "gt") == [
            "001.Black_footed_Albatross",
            "002.Laysan_Albatross",
        ]
        assert classes_from_field(ds, "note") == [
            "001.Black_footed_Albatross",
            "002.Laysan_Albatross",
        ]
        assert label_path(ds, "dets") == "dets.detections.label"
        assert classes_from_field(ds, "dets") == [
            "001.BLACK_FOOTED_ALBATROSS",
            "002.LAYSAN_ALBATROSS",
        ]
        with pytest.raises(
            UserError,
            match=r"field 'nope' does not exist .* label fields: "
            r"dets, gt, note",
        ):
            classes_from_field(ds, "nope")
        with pytest.raises(UserError, match="holds no class labels"):
            classes_from_field(ds, "metadata")
    finally:
        ds.delete()
