"""Re-score a view from stored view embeddings: any attribute set, any method
(LaZSL, WCA, DCLIP, CLIP) and its parameters, no image encoding.

A run made with ``store_features`` (``classify --store-features``) keeps each
sample's ``[1 + N, D]`` view embeddings and crop boxes in a
:class:`~fiftyone_lazsl.core.features.FeatureStore`. :func:`rescore` reads them
back for the samples of a view, scores them with
:meth:`LaZSLClassifier.predict_features` and writes the same fields and run
record as :func:`fiftyone_lazsl.fo.apply.run_lazsl` (the same
:class:`~fiftyone_lazsl.fo.run.LaZSLRun`), so
every reader of LaZSL runs (panel, audit, evaluate) works on the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.config import CROP_METHODS, METHODS, LaZSLConfig, OutputConfig
from fiftyone_lazsl.core.features import (
    FeatureEntry,
    FeatureStore,
    StoringClassifier,
    feature_spec,
    fingerprint,
    predict_entries,
)
from fiftyone_lazsl.core.models import LazyModel
from fiftyone_lazsl.core.pipeline import Item, iter_predictions, non_finite
from fiftyone_lazsl.core.scoring import crop_global_similarity
from fiftyone_lazsl.errors import ConfigError
from fiftyone_lazsl.fo.datasets import check_sample_view
from fiftyone_lazsl.fo.heatmaps import write_heatmaps
from fiftyone_lazsl.fo.run import LaZSLRun, RunSummary, progress_reporter, split_overrides
from fiftyone_lazsl.fo.runs import get_run_config

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
    try:
        old = get_run_config(samples, from_field)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not old.get("feature_store"):
        raise ConfigError(
            f"the run on field {from_field!r} did not store features; classify again with "
            "--store-features (store_features=True) to re-score from it"
        )
    return old


def rescore(
    samples: Any,
    attribute_set: Any,
    *,
    from_field: str,
    label_field: str,
    output: OutputConfig | None = None,
    missing: str = "encode",
    gt_field: str | None = None,
    restrict_to_set: bool = False,
    classifier: Any = None,
    progress: Any = None,
    **params: Any,
) -> RunSummary:
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
        output: what the run writes
            (:class:`~fiftyone_lazsl.core.config.OutputConfig`; the options
            ``store_features``, ``feature_dtype`` and ``num_workers`` do not
            apply: the stored features are read).
        missing: samples without valid stored features (never stored, image
            file changed since): ``"encode"`` them on the way (and store them),
            or ``"skip"`` them, writing the reason to ``F_error``.
        gt_field, restrict_to_set, classifier, progress: as :func:`run_lazsl`
            (``classifier``: a pre-built :class:`LaZSLClassifier` for
            ``attribute_set``, then the scoring parameters are its own; saves
            encoding the set's prompts again, e.g. in the App's workbench).
        **params: the scoring parameters, each the stored run's unless
            given: ``theta``, ``eps``, ``gamma``, ``max_iter``, ``stop_tol``,
            ``image_scale_log``, ``text_scale_log``, ``prompt_style``,
            ``prompt_suffix``, ``device``; ``batch_size`` (samples scored per
            batch, default 64); ``method`` (default ``"lazsl"``:
            ``"lazsl"``, ``"wca"``, ``"dclip"`` or ``"clip"``, whatever
            method the stored run used: every method scores the stored visual
            set (its ``n_crops``, ``crop_scale``, ``seed``, recorded in the new
            run's config), so re-scoring equals a fresh run of ``method`` with
            that visual set. LaZSL and WCA need stored crops (a run made with
            ``lazsl`` or ``wca``); DCLIP and CLIP use the global view only);
            overrides of ``output`` (``top_k_crops=3``...); ``model``: a
            :class:`~fiftyone_lazsl.core.models.LoadedModel` to use instead of
            loading the run's (needed to reuse features of a random-weights
            model in the same process).
            ``feature_store``: the store (directory or ``FeatureStore``);
            default: the one the run record names.

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
    model = params.pop("model", None)
    feature_store = params.pop("feature_store", None)
    params = {k: v for k, v in params.items() if v is not None or k in OutputConfig.field_names()}
    params.setdefault("method", "lazsl")
    params.setdefault("batch_size", 64)
    if missing not in MISSING_CHOICES:
        raise ConfigError(f"missing must be one of {', '.join(MISSING_CHOICES)}, got {missing!r}")
    bad = sorted(set(params) & set(VISUAL_SET_PARAMS))
    if bad:
        raise ConfigError(
            f"{', '.join(bad)} determine the stored features and cannot change "
            f"when re-scoring; run classify again for other values"
        )
    method = params["method"]
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_sample_view(samples)
    old = stored_run(samples, from_field)
    if method in CROP_METHODS and not int(old.get("n_crops") or 0):
        raise ConfigError(
            f"the run on {from_field!r} ({old.get('method')}) stored the global view only; "
            f"method {method!r} needs crops: classify with --method lazsl or wca and "
            "--store-features to re-score with it"
        )
    cfg, output = split_overrides(LaZSLConfig.from_dict(old, strict=False), output, params)
    if output.store_features:
        raise ConfigError(
            "store_features does not apply to re-scoring: it reads the features "
            f"the run on {from_field!r} stored"
        )
    run = LaZSLRun(
        samples,
        attribute_set,
        label_field,
        output=output.replace(num_workers=0),
        gt_field=gt_field,
        restrict_to_set=restrict_to_set,
    )
    if len(run) == 0:
        run.summary.seconds = time.time() - run.t0
        return run.summary
    with run.lock():  # one writer per label field, for re-scoring as for classify
        clf = _write_rescored(
            run, old, cfg, from_field, feature_store, classifier, model, missing, progress
        )
    if run.output.heatmap and clf.method == "lazsl":
        write_heatmaps(run.dataset.select(run.ids), label_field)
    if run.summary.random_weights:
        logger.warning(
            "RANDOM WEIGHTS were used for field %r: predictions are meaningless", label_field
        )
    return run.summary


def _write_rescored(
    run: LaZSLRun,
    old: dict,
    cfg: LaZSLConfig,
    from_field: str,
    feature_store: Any,
    classifier: Any,
    model: Any,
    missing: str,
    progress: Any,
) -> Any:
    """The part of :func:`rescore` that writes, run while holding the field's lock."""
    rec = old["feature_store"]
    if isinstance(feature_store, FeatureStore):
        store = feature_store
    else:
        store = FeatureStore(
            feature_store or rec["path"],
            dtype=rec.get("dtype", "float16"),
            check=rec.get("check", "stat"),
        )
    if classifier is not None:
        clf = classifier
    elif model is not None:
        clf = LaZSLClassifier(run.attribute_set, model=model, config=cfg)
    else:  # the run's model, loaded only if a prompt or an image needs encoding
        clf = LaZSLClassifier(
            run.attribute_set, model=LazyModel.from_provenance(old, device=cfg.device), config=cfg
        )
    spec = feature_spec(clf)
    spec["n_crops"] = int(old.get("n_crops") or 0)  # dclip re-scoring of a lazsl run: global view
    fp = fingerprint(spec)
    if fp != rec["fingerprint"]:
        was = store.spec(rec["fingerprint"]) or {}
        diff = sorted(k for k in set(spec) | set(was) if spec.get(k) != was.get(k))
        raise ConfigError(
            f"the stored features of the run on {from_field!r} were made with another model or "
            f"visual set ({', '.join(diff) or 'fingerprint'} differ: e.g. a changed weights file, "
            "or random weights loaded again); classify again with --store-features"
        )
    summary = run.summary
    summary.random_weights = clf.model.random_weights
    fs = dict(store.describe(), fingerprint=fp, bytes_before=store.size_bytes())
    summary.feature_store = dict(fs)
    counts = {"reused": 0, "stored": 0, "skipped": 0}
    paths = run.view.values("filepath")
    items = _iter_items(clf, store, fp, spec, paths, cfg.batch_size, missing, counts)

    def outcome() -> dict:
        summary.feature_store.update(bytes_after=store.size_bytes(), **counts)
        return {"feature_store": dict(summary.feature_store)}

    run.write(
        clf,
        clf.config(),
        items=items,
        extra={"rescored_from": from_field, "feature_store": fs},
        progress=progress_reporter(progress, len(run)),
        outcome=outcome,
    )
    return clf


def _iter_items(
    clf: Any,
    store: Any,
    fp: str,
    spec: dict,
    paths: list,
    batch_size: int,
    missing: str,
    counts: dict,
) -> Iterator[list]:
    """Batches of :class:`~fiftyone_lazsl.core.pipeline.Item`: predictions from
    stored features; samples without them encoded (and stored) or skipped."""
    encoder = None
    for s in range(0, len(paths), batch_size):
        chunk = paths[s : s + batch_size]
        found, why = store.get_many(fp, chunk)
        items = [Item(index=s + j, key=p, filepath=p) for j, p in enumerate(chunk)]
        have = [it for it in items if it.key in found]
        if have:
            preds = predict_entries(clf, [found[it.key] for it in have])
            for it, p in zip(have, preds):
                bad = non_finite(p)
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
            for batch in iter_predictions(
                encoder, [it.filepath for it in lack], batch_size=clf.batch_size, num_workers=0
            ):
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
        self.clf = clf
        enc = clf
        if clf.n_crops != spec["n_crops"]:
            enc = LaZSLClassifier(
                clf.attribute_set, model=clf.model, config=clf.lazsl_config.replace(method="lazsl")
            )
        self.encoder = enc
        self.storing = StoringClassifier(enc, store, reuse=False)
        if self.storing.fingerprint != fp:  # pragma: no cover -- guarded by rescore()
            raise ConfigError("internal: encoder fingerprint differs from the store's")
        self.batch_size = clf.batch_size
        self.stored = 0

    @property
    def visual_spec(self) -> Any:
        """The store's visual set (what the decode workers prepare)."""
        return self.encoder.visual_spec

    def predict_tensors(
        self, images: Any, keys: Any, sizes: Any = None, scales: Any = None
    ) -> list:
        enc = self.encoder
        prepared = [enc.prepare_views(im, k) for im, k in zip(images, keys)]
        return self.predict_prepared(prepared, sizes, scales)

    def predict_prepared(self, prepared: Any, sizes: Any = None, scales: Any = None) -> list:
        """Encode prepared visual sets with the store's visual set, store them,
        and score them with the re-scoring classifier."""
        st, enc = self.storing, self.encoder
        keys = [p.key for p in prepared]
        dims = [(int(p.width), int(p.height)) for p in prepared]
        sizes = list(sizes) if sizes is not None else dims
        scales = list(scales) if scales is not None else [1.0] * len(prepared)
        feats = enc.encode_prepared(prepared)
        sims = crop_global_similarity(feats)
        boxes = [p.boxes for p in prepared]
        st.store.put_many(
            st.fingerprint,
            [
                FeatureEntry(
                    key=k,
                    features=f.cpu().numpy(),
                    boxes=b,
                    image_size=d,
                    original_size=tuple(sz),
                    scale=float(sc),
                    crop_global=r.cpu().numpy(),
                )
                for k, f, b, d, sz, sc, r in zip(keys, feats, boxes, dims, sizes, scales, sims)
            ],
        )
        self.stored += len(keys)
        if self.clf.method not in CROP_METHODS:
            return self.clf.predict_features(feats[:, :1], boxes, dims, sizes, scales)
        return self.clf.predict_features(feats, boxes, dims, sizes, scales, crop_global=sims)
