"""Background writer (fiftyone_lazsl.fo.writer) and compact label documents
(fiftyone_lazsl.fo.labels), against the tests' real mongod."""

import threading

import bson
import fiftyone as fo
import numpy as np
import pytest

from fiftyone_lazsl.fo import writer as fw
from fiftyone_lazsl.fo.labels import class_evidence, evidence_class_indices, strip_article


def _dataset(name, n):
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name)
    if n:
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(n)])
    return ds


def test_writes_every_sample_atomically_with_labels_readable():
    ds = _dataset("writer-basic", 10)
    try:
        ids = ds.values("id")
        with fw.BackgroundWriter(ds, batch_size=3, max_pending=2) as w:
            for i, sid in enumerate(ids):
                cls = fo.Classification(label=f"c{i}", confidence=0.5).to_dict()
                w.put(sid, {"err": None if i % 2 else f"bad {i}", "pred": cls})
        assert w.samples_written == 10
        ds.add_sample_field("pred", fo.EmbeddedDocumentField, embedded_doc_type=fo.Classification)
        ds.add_sample_field("err", fo.StringField)
        got = dict(zip(ds.values("id"), zip(ds.values("pred.label"), ds.values("err"))))
        assert got == {sid: (f"c{i}", None if i % 2 else f"bad {i}") for i, sid in enumerate(ids)}
        # documents come back as real labels
        assert isinstance(ds[ids[4]].pred, fo.Classification)
    finally:
        ds.delete()


def test_back_pressure_blocks_put_until_the_writer_catches_up():
    release = threading.Event()
    writes = []

    def slow_write(dataset, batch):
        release.wait(30)
        writes.append(len(batch))

    w = fw.BackgroundWriter(None, batch_size=1, max_pending=1, write=slow_write)
    w.put("a", {})  # taken by the writer thread (blocked in slow_write)
    # the queue (1 batch) fills up; a further put must block
    done = threading.Event()

    def producer():
        w.put("b", {})
        w.put("c", {})
        done.set()

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    assert not done.wait(0.5), "put returned although the queue was full"
    release.set()
    assert done.wait(30)
    w.close()
    assert writes == [1, 1, 1] and w.samples_written == 3


def test_writer_failure_is_raised_in_the_caller_and_later_batches_are_not_written():
    calls = []

    def failing(dataset, batch):
        calls.append([sid for sid, _ in batch])
        if len(calls) == 2:
            raise OSError("disk full")

    w = fw.BackgroundWriter(None, batch_size=2, max_pending=8, write=failing)
    with pytest.raises(fw.WriterError, match="disk full") as ei:
        for i in range(40):
            w.put(str(i), {})
        w.close()
    assert isinstance(ei.value.__cause__, OSError)
    w.abort()
    assert calls[:2] == [["0", "1"], ["2", "3"]] and len(calls) == 2


def test_run_lazsl_surfaces_writer_failure_and_keeps_written_batches(
    shared_data, tmp_path, monkeypatch
):
    """A database failure mid-run is raised by run_lazsl (not swallowed); the
    batches written before it are complete and the run is recorded interrupted."""
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.testing import tiny_clip

    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    photos = tiny_clip.some_images(shared_data, "cub", per_class=2, max_classes=3)
    aset = {c: ["a red head", "long wings"] for c in sorted({c for _, c in photos})}
    ds = _dataset("writer-fail-run", 0)
    ds.add_samples([fo.Sample(filepath=p) for p, _ in photos])
    real = fw.bulk_set
    n_calls = []

    def second_write_fails(dataset, batch):
        n_calls.append(1)
        if len(n_calls) == 2:
            raise ConnectionError("mongod went away")
        real(dataset, batch)

    monkeypatch.setattr(fw, "bulk_set", second_write_fails)
    try:
        with pytest.raises(fw.WriterError, match="mongod went away"):
            run_lazsl(
                ds,
                aset,
                model=tiny_clip.TINY_MODEL,
                pretrained=ckpt,
                n_crops=4,
                batch_size=2,
                write_every=2,
                num_workers=0,
                device="cpu",
            )
        cfg = ds.get_run_info("lazsl_lazsl").config
        assert cfg.status == "interrupted"
        done = ds.exists("lazsl")
        assert len(done) == 2
        for s in done:
            assert s.lazsl_crops.detections and s.lazsl_attributes and s.lazsl_error is None
    finally:
        ds.delete()


class _Pred:
    def __init__(self, logits, label_index):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.label_index = label_index


def test_evidence_classes_predicted_runner_ups_and_ground_truth():
    p = _Pred([0.1, 0.9, 0.5, 0.7, 0.2], 1)
    assert evidence_class_indices(p, None, 1) == [(1, "predicted"), (3, "runner_up")]
    assert evidence_class_indices(p, 4, 2) == [
        (1, "predicted"),
        (3, "runner_up"),
        (2, "runner_up"),
        (4, "ground_truth"),
    ]
    assert evidence_class_indices(p, 3, 1) == [(1, "predicted"), (3, "runner_up")]
    assert evidence_class_indices(p, None, 0) == [(1, "predicted")]
    assert strip_article("a white head") == "white head"
    assert strip_article("An orange bill") == "orange bill"
    assert strip_article("wings") == "wings" and strip_article("theme park") == "theme park"


def test_class_evidence_reads_compact_and_full_forms():
    full = {"attribute_scores": [[0.1, 0.2], [0.3]], "attribute_crops": [[1, 0], [2]]}
    compact = {"evidence": [{"index": 1, "scores": [0.3], "crops": [2]}]}
    assert class_evidence(full, 1) == ([0.3], [2])
    assert class_evidence(compact, 1) == ([0.3], [2])
    assert class_evidence(compact, 0) == (None, None)
    assert class_evidence(None, 0) == (None, None)


def test_compact_cub_document_is_under_10kb(shared_data, tmp_path):
    """A real LaZSL run with the CUB set (C = 200) and N = 90 crops stores at
    most 10 KB per sample by default (BSON size of the document in MongoDB),
    while evidence='full' stores the old every-class arrays."""
    from fiftyone_lazsl import run_lazsl
    from fiftyone_lazsl.core.attributes import AttributeSet
    from fiftyone_lazsl.testing import tiny_clip

    tiny_clip.register()
    ckpt = str(tiny_clip.save_checkpoint(tmp_path / "tiny.pt", seed=2))
    aset = AttributeSet.from_json(str(shared_data / "attribute_sets" / "cub.json"))
    photos = tiny_clip.some_images(shared_data, "cub", per_class=1, max_classes=2)
    ds = _dataset("writer-size", 0)
    try:
        ds.add_samples([fo.Sample(filepath=p) for p, _ in photos])
        kw = dict(
            model=tiny_clip.TINY_MODEL,
            pretrained=ckpt,
            n_crops=90,
            batch_size=2,
            num_workers=0,
            device="cpu",
        )
        run_lazsl(ds, aset, label_field="c", **kw)
        run_lazsl(ds, aset, label_field="f", evidence="full", **kw)
        coll = fo.core.odm.get_db_conn()[ds._sample_collection_name]
        for doc in coll.find():
            compact = {
                k: v for k, v in doc.items() if k not in ("f", "f_crops", "f_attributes", "f_error")
            }
            size = len(bson.BSON.encode(compact))
            assert size <= 10_000, size
            assert len(doc["c"]["evidence_by_class"]) == 2 and "attribute_scores" not in doc["c"]
            assert "evidence" not in doc["c"]  # the list of dicts the App tooltip cannot render
            assert len(doc["f"]["attribute_scores"]) == 200
            assert len(doc["c_crops"]["detections"]) <= 10
            assert len(doc["f_crops"]["detections"]) >= len(doc["c_crops"]["detections"])
            # keywords: F_attributes without the article, declared for the App sidebar
            assert doc["c"]["keywords"] == [strip_article(t) for t in doc["c_attributes"]]
            assert not any(k.lower().startswith(("a ", "an ")) for k in doc["c"]["keywords"])
        assert isinstance(ds.get_field("c.keywords"), fo.ListField)
    finally:
        ds.delete()
