"""Re-score a view from stored view embeddings: any attribute set, any method
(LaZSL, WCA, DCLIP, CLIP) and its parameters, no image encoding.

A run made with ``store_features`` (``classify --store-features``) keeps each
sample's ``[1 + N, D]`` view embeddings and crop boxes in a
:class:`~fiftyone_lazsl.core.features.FeatureStore`. :func:`rescore` reads them
back for the samples of a view, scores them with
:meth:`LaZSLClassifier.predict_features` and writes the same fields and run
record as :func:`fiftyone_lazsl.fo.apply.run_lazsl` (through its steps), so
every reader of LaZSL runs (panel, audit, evaluate) works on the result.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

from fiftyone_lazsl.core.config import CROP_METHODS, METHODS, LaZSLConfig
from fiftyone_lazsl.core.features import FeatureEntry, predict_entries
from fiftyone_lazsl.core.scoring import crop_global_similarity
from fiftyone_lazsl.errors import ConfigError
from fiftyone_lazsl.fo.datasets import dataset_of

logger = logging.getLogger(__name__)

#: Parameters that determine the stored features: a re-scoring cannot change them.
VISUAL_SET_PARAMS = ("model", "pretrained", "n_crops", "crop_scale", "seed", "crop_backend")
#: What to do with samples that have no valid stored features.
MISSING_CHOICES = ("encode", "skip")


def stored_run(samples: Any, from_field: str) -> dict:
    """The recorded config of the run on ``from_field``, checked to name a feature store.

    Raises:
        ConfigError: no LaZSL run wrote ``from_field``, or it stored no features.
    """
    from fiftyone_lazsl.fo.runs import get_run_config

    try:
        old = get_run_config(dataset_of(samples), from_field)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not old.get("feature_store"):
        raise ConfigError(
            f"the run on field {from_field!r} did not store features; classify again with "
            "--store-features (store_features=True) to re-score from it")
    return old


def rescore(samples: Any, attribute_set: Any, *, from_field: str, label_field: str,
            theta: float | None = None, eps: float | None = None, gamma: float | None = None,
            method: str = "lazsl", missing: str = "encode", model: Any = None,
            feature_store: Any = None, gt_field: str | None = None,
            restrict_to_set: bool = False, top_k_crops: int | str | None = "auto",
            top_attributes: int = 5, evidence: str = "compact", runner_ups: int = 1,
            heatmap: bool = False, write_every: int = 64,
            batch_size: int = 64, progress: Any = None, classifier: Any = None,
            **params: Any) -> Any:
    """Re-score ``samples`` from the features stored by the run on ``from_field``.

    Args:
        samples: a FiftyOne dataset or view.
        attribute_set: any attribute set (an :class:`AttributeSet`, dict, stored
            name, JSON path or published name), e.g. an edited copy of the one
            the run used.
        from_field: label field of a run made with ``store_features``; its
            model, weights, preprocessing and visual set (``n_crops``,
            ``crop_scale``, ``seed``) are reused.
        label_field: the field to write (``F``, ``F_crops``, ``F_attributes``,
            ``F_error``, as :func:`~fiftyone_lazsl.fo.apply.run_lazsl`); may be
            ``from_field`` itself to replace that run's outputs.
        theta, eps, gamma: LaZSL parameters (None: the run's).
        method: ``"lazsl"``, ``"wca"``, ``"dclip"`` or ``"clip"``, whatever
            method the stored run used: every method scores the stored visual
            set (its ``n_crops``, ``crop_scale``, ``seed``, recorded in the new
            run's config), so re-scoring equals a fresh run of ``method`` with
            that visual set. LaZSL and WCA need stored crops (a run made with
            ``lazsl`` or ``wca``); DCLIP and CLIP use the global view only.
        missing: samples without valid stored features (never stored, image
            file changed since): ``"encode"`` them on the way (and store them),
            or ``"skip"`` them, writing the reason to ``F_error``.
        model: a :class:`~fiftyone_lazsl.core.models.LoadedModel` to use
            instead of loading the run's (needed to reuse features of a
            random-weights model in the same process).
        feature_store: the store (directory or ``FeatureStore``); default: the
            one the run record names.
        gt_field, restrict_to_set, top_k_crops, top_attributes, evidence, runner_ups, heatmap,
            write_every: as :func:`run_lazsl`.
        batch_size: samples scored per batch.
        progress: as :func:`run_lazsl`.
        classifier: a pre-built :class:`LaZSLClassifier` for ``attribute_set``
            (then ``theta``/``eps``/``gamma``/``method``/``params`` are its own;
            saves encoding the set's prompts again, e.g. in the App's workbench).
        **params: other :class:`LaZSLConfig` output parameters (``max_iter``,
            ``stop_tol``, ``prompt_style``, ``prompt_suffix``, ``device``).

    Returns:
        a :class:`~fiftyone_lazsl.fo.apply.RunSummary`; its ``feature_store``
        says how many samples were served from the store and encoded.

    Raises:
        ConfigError: ``from_field`` has no stored features; a parameter that
            would change the visual set (``model``, ``pretrained``, ``n_crops``,
            ``crop_scale``, ``seed``, ``crop_backend``); a crop method
            (``lazsl``, ``wca``) on a store without crops; the store's
            fingerprint no longer matches the model (weights file changed);
            bad ``missing``/``method``.
        the errors of :func:`run_lazsl` for the attribute set, label field
            and ``gt_field``; ``RunConflictError`` when another run writes
            ``label_field`` (one writer per label field) or the rerun would
            leave two runs in it (:func:`~fiftyone_lazsl.fo.apply.check_one_run`).

    The results equal a fresh :func:`run_lazsl` with the same parameters up to
    the storage precision (float32 storage: identical to 1e-6; float16: see
    ``docs/feature-store.md``, "Re-scoring", and ``tests/test_feature_precision.py``).
    """
    from fiftyone_lazsl.fo import apply as ap

    t0 = time.time()
    if missing not in MISSING_CHOICES:
        raise ConfigError(f"missing must be one of {', '.join(MISSING_CHOICES)}, got {missing!r}")
    bad = sorted(set(params) & set(VISUAL_SET_PARAMS))
    if bad:
        raise ConfigError(f"{', '.join(bad)} determine the stored features and cannot change "
                          f"when re-scoring; run classify again for other values")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    from fiftyone_lazsl.fo.datasets import check_sample_view

    check_sample_view(samples)
    dataset = dataset_of(samples)
    old = stored_run(samples, from_field)
    if method in CROP_METHODS and not int(old.get("n_crops") or 0):
        raise ConfigError(
            f"the run on {from_field!r} ({old.get('method')}) stored the global view only; "
            f"method {method!r} needs crops: classify with --method lazsl or wca and "
            "--store-features to re-score with it")
    changes = {k: v for k, v in (("theta", theta), ("eps", eps), ("gamma", gamma)) if v is not None}
    cfg = LaZSLConfig.from_dict(old, strict=False).replace(method=method, batch_size=batch_size,
                                                           **changes, **params)
    opts = ap.OutputOptions(top_k_crops=top_k_crops, top_attributes=top_attributes,
                            heatmap=heatmap, write_every=write_every, num_workers=0,
                            evidence=evidence, runner_ups=runner_ups)
    ap._check_label_field(dataset, label_field)
    aset = ap._resolve_attribute_set(attribute_set, dataset)
    view = ap._target_view(samples, dataset, aset, label_field, gt_field, restrict_to_set, False)
    summary = ap.RunSummary(label_field=label_field, run_key=None, num_samples=len(view))
    if summary.num_samples == 0:
        summary.seconds = time.time() - t0
        return summary

    from fiftyone_lazsl.fo.locks import acquire

    # One writer per label field, for re-scoring as for classify.
    lock = acquire(dataset, label_field)
    try:
        clf, store, counts, ids = _rescore_locked(
            dataset, view, old, aset, cfg, opts, summary, from_field, label_field,
            feature_store, classifier, model, gt_field, batch_size, missing, progress, t0,
            lock.owner)
    except Exception as e:  # noqa: BLE001 -- re-raised, as one line if the dataset is gone
        from fiftyone_lazsl.fo.writer import note_database_error

        note_database_error(e)
        ap.raise_if_dataset_deleted(dataset, e)
        raise
    finally:
        lock.release()
    if heatmap and clf.method == "lazsl":
        from fiftyone_lazsl.fo.heatmaps import write_heatmaps
        write_heatmaps(dataset.select(ids), label_field)
    if summary.random_weights:
        logger.warning("RANDOM WEIGHTS were used for field %r: predictions are meaningless",
                       label_field)
    return summary


def _rescore_locked(dataset: Any, view: Any, old: dict, aset: Any, cfg: Any, opts: Any,
                    summary: Any, from_field: str, label_field: str, feature_store: Any,
                    classifier: Any, model: Any, gt_field: str | None, batch_size: int,
                    missing: str, progress: Any, t0: float, owner: str) -> tuple:
    """The part of :func:`rescore` that writes, run while holding the field's lock."""
    from fiftyone_lazsl.core.classifier import LaZSLClassifier
    from fiftyone_lazsl.core.features import FeatureStore, feature_spec, fingerprint
    from fiftyone_lazsl.core.models import LazyModel
    from fiftyone_lazsl.fo import apply as ap

    rec = old["feature_store"]
    if isinstance(feature_store, FeatureStore):
        store = feature_store
    else:
        store = FeatureStore(feature_store or rec["path"], dtype=rec.get("dtype", "float16"),
                             check=rec.get("check", "stat"))
    if classifier is not None:
        clf = classifier
    elif model is not None:
        clf = LaZSLClassifier(aset, model=model, config=cfg)
    else:  # the run's model, loaded only if a prompt or an image needs encoding
        clf = LaZSLClassifier(aset, model=LazyModel.from_provenance(old, device=cfg.device), config=cfg)
    spec = feature_spec(clf)
    spec["n_crops"] = int(old.get("n_crops") or 0)  # dclip re-scoring of a lazsl run: global view
    fp = fingerprint(spec)
    if fp != rec["fingerprint"]:
        was = store.spec(rec["fingerprint"]) or {}
        diff = sorted(k for k in set(spec) | set(was) if spec.get(k) != was.get(k))
        raise ConfigError(
            f"the stored features of the run on {from_field!r} were made with another model or "
            f"visual set ({', '.join(diff) or 'fingerprint'} differ: e.g. a changed weights file, "
            "or random weights loaded again); classify again with --store-features")
    summary.random_weights = clf.model.random_weights
    extra = {"rescored_from": from_field,
             "feature_store": dict(store.describe(), fingerprint=fp, bytes_before=store.size_bytes())}
    summary.feature_store = dict(extra["feature_store"])
    ids, paths = view.values(["id", "filepath"])

    def start() -> None:
        key, _ = ap._start_run(dataset, clf, label_field, opts, False, summary.num_samples,
                               extra=extra, owner=owner, view=view)
        summary.run_key = key
        ap._clear_outputs(view, dataset, label_field, len(ids))

    # as run_lazsl: a rerun replacing earlier outputs starts once a sample succeeded
    earlier = ap._holding_outputs(view, label_field)
    replacing = earlier is not None and earlier.count() > 0
    if replacing:
        ap._start_run(dataset, clf, label_field, opts, False, summary.num_samples,
                      extra=extra, register=False, view=view)
    else:
        start()
    counts = {"reused": 0, "stored": 0, "skipped": 0}
    items = _iter_items(clf, store, fp, spec, paths, batch_size, missing, counts)
    done = 0
    try:
        gt_index = ap._gt_indices(view, clf, gt_field) if gt_field else None
        done = ap._classify_and_write(dataset, clf, ids, paths, label_field, opts, summary,
                                      ap._progress_fn(progress, len(ids)), gt_index=gt_index,
                                      items=items, start=start if replacing else None)
    finally:
        summary.seconds = time.time() - t0
        summary.feature_store.update(bytes_after=store.size_bytes(), **counts)
        key = summary.run_key
        from fiftyone_lazsl.fo.writer import database_lost

        if key is not None:
            ap._finish_run(dataset, key, summary, complete=done == len(ids))
        if key is not None and not database_lost():
            info = dataset.get_run_info(key)
            info.config.feature_store = dict(summary.feature_store)
            dataset.update_run_config(key, info.config)
    return clf, store, counts, ids


def _iter_items(clf: Any, store: Any, fp: str, spec: dict, paths: list, batch_size: int,
                missing: str, counts: dict) -> Iterator[list]:
    """Batches of :class:`~fiftyone_lazsl.core.pipeline.Item`: predictions from
    stored features; samples without them encoded (and stored) or skipped."""
    from fiftyone_lazsl.core.pipeline import Item, _non_finite, iter_predictions

    encoder = None
    for s in range(0, len(paths), batch_size):
        chunk = paths[s:s + batch_size]
        found, why = store.get_many(fp, chunk)
        items = [Item(index=s + j, key=p, filepath=p) for j, p in enumerate(chunk)]
        have = [it for it in items if it.key in found]
        if have:
            preds = predict_entries(clf, [found[it.key] for it in have])
            for it, p in zip(have, preds):
                bad = _non_finite(p)
                if bad:
                    it.error = f"non-finite scores ({bad}); nothing written"
                else:
                    it.prediction = p
            counts["reused"] += len(have)
        lack = [it for it in items if it.key not in found]
        if lack and missing == "skip":
            for it in lack:
                it.error = f"skipped: {why[it.key]}"
            counts["skipped"] += len(lack)
        elif lack:
            if encoder is None:
                encoder = _Encoder(clf, store, fp, spec)
            for batch in iter_predictions(encoder, [it.filepath for it in lack],
                                          batch_size=clf.batch_size, num_workers=0):
                for sub in batch:
                    it = lack[sub.index]
                    it.prediction, it.error = sub.prediction, sub.error
            counts["stored"] += encoder.stored
            encoder.stored = 0
        yield items


class _Encoder:
    """Encodes samples missing from the store with the visual set the store
    was made with (``spec``'s ``n_crops``), stores them, and scores them with
    ``clf`` (a DCLIP re-scoring of a LaZSL run still stores all crops)."""

    def __init__(self, clf: Any, store: Any, fp: str, spec: dict) -> None:
        from fiftyone_lazsl.core.classifier import LaZSLClassifier
        from fiftyone_lazsl.core.features import StoringClassifier

        self.clf = clf
        enc = clf
        if clf.n_crops != spec["n_crops"]:
            enc = LaZSLClassifier(clf.attribute_set, model=clf.model,
                                  config=clf.lazsl_config.replace(method="lazsl"))
        self.storing = StoringClassifier(enc, store, reuse=False)
        if self.storing.fingerprint != fp:  # pragma: no cover -- guarded by rescore()
            raise ConfigError("internal: encoder fingerprint differs from the store's")
        self.batch_size = clf.batch_size
        self.stored = 0

    @property
    def visual_spec(self) -> Any:
        """The store's visual set (what the decode workers prepare)."""
        return self.storing._clf.visual_spec

    def predict_tensors(self, images: Any, keys: Any, sizes: Any = None,
                        scales: Any = None) -> list:
        enc = self.storing._clf
        prepared = [enc.prepare_views(im, k) for im, k in zip(images, keys)]
        return self.predict_prepared(prepared, sizes, scales)

    def predict_prepared(self, prepared: Any, sizes: Any = None, scales: Any = None) -> list:
        """Encode prepared visual sets with the store's visual set, store them,
        and score them with the re-scoring classifier."""
        st = self.storing
        enc = st._clf
        keys = [p.key for p in prepared]
        dims = [(int(p.width), int(p.height)) for p in prepared]
        sizes = list(sizes) if sizes is not None else dims
        scales = list(scales) if scales is not None else [1.0] * len(prepared)
        feats = enc.encode_prepared(prepared)
        sims = crop_global_similarity(feats)
        boxes = [p.boxes for p in prepared]
        st.store.put_many(st.fingerprint, [
            FeatureEntry(key=k, features=f.cpu().numpy(), boxes=b, image_size=d,
                         original_size=tuple(sz), scale=float(sc), crop_global=r.cpu().numpy())
            for k, f, b, d, sz, sc, r in zip(keys, feats, boxes, dims, sizes, scales, sims)])
        self.stored += len(keys)
        if self.clf.method not in CROP_METHODS:
            return self.clf.predict_features(feats[:, :1], boxes, dims, sizes, scales)
        return self.clf.predict_features(feats, boxes, dims, sizes, scales, crop_global=sims)
