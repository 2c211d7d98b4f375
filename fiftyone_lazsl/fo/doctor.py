"""Attribute diagnostics ("attribute doctor") over a view with stored features.

For the attribute set of the run on ``from_field`` (or another set), every
attribute gets, from the stored view embeddings (no encoding):

* ``top_rate``: the share of kept crops, over the view, whose largest
  transport mass within the attribute's class goes to it (LaZSL's transport
  plan, Eq. 6 of the paper). Uniform would be ``1 / A_c``; 0 means no crop of
  any image ever prefers it;
* ``auc``: how well its contribution to its class's score
  (``sum_n T[n, a] S[n, a]``) separates samples of its class from the others
  (ROC AUC, ``sklearn.metrics.roc_auc_score``; classes from ``gt_field``, else
  the run's predictions). 0.5 = no discrimination;
* ``duplicates``: other attributes whose prompt text embeddings have cosine
  >= ``dup_threshold`` (within its class and across classes).

Classes are flagged as degenerate when they have no attribute, a single one,
or only near-duplicates. :func:`attribute_doctor` also saves one view per
flagged attribute and a proposed pruned attribute set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.classifier import LaZSLClassifier
from fiftyone_lazsl.core.config import LaZSLConfig
from fiftyone_lazsl.core.features import FeatureStore, feature_spec, fingerprint, predict_entries
from fiftyone_lazsl.errors import ConfigError
from fiftyone_lazsl.fo.datasets import dataset_of
from fiftyone_lazsl.fo.rescore import stored_run
from fiftyone_lazsl.fo.run import to_attribute_set
from fiftyone_lazsl.fo.store import derived_set_name, recorded_attribute_set, save_attribute_set


@dataclass(frozen=True)
class DoctorConfig:
    """What :func:`attribute_doctor` flags and how far it looks.

    Attributes:
        dup_threshold: text-embedding cosine at or above which two attributes
            are near-duplicates, in ``[0, 1]``.
        min_auc: attributes whose AUC is below this are flagged ``"weak"``
            (only when the class has samples and non-samples in the view).
        min_top_rate: attributes whose ``top_rate`` is at or below this are
            flagged ``"never-top"`` (default 0: no crop ever prefers it).
        max_views: at most this many saved views (>= 0).
        batch_size: samples scored per batch (>= 1).
        all_classes: diagnose every class of the set; by default only the
            classes present in the samples (their ``gt_field`` labels, else the
            run's predictions) are diagnosed, and the proposed pruned set
            changes only those (the other classes are copied unchanged).

    Raises:
        ConfigError: a value out of its domain, naming it.
    """

    dup_threshold: float = 0.95
    min_auc: float = 0.55
    min_top_rate: float = 0.0
    max_views: int = 50
    batch_size: int = 64
    all_classes: bool = False

    def __post_init__(self) -> None:
        for name in ("dup_threshold", "min_auc", "min_top_rate"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {v!r}")
        for name, lo in (("max_views", 0), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")

    def replace(self, **changes: Any) -> DoctorConfig:
        """A copy with some fields changed (validated).

        Raises:
            ConfigError: an unknown field or a bad value.
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(
                f"unknown doctor parameter(s): {', '.join(unknown)}; expected "
                f"some of: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)


@dataclass
class AttributeDiagnosis:
    """One attribute's figures (see the module docstring)."""

    class_name: str
    index: int
    attribute: str
    top_rate: float
    auc: float | None
    num_class_samples: int
    duplicates_within: list[str] = field(default_factory=list)
    duplicates_across: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    saved_view: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DoctorReport:
    """What :func:`attribute_doctor` found.

    Attributes:
        attributes: one :class:`AttributeDiagnosis` per attribute, in set order.
        degenerate: ``{class: reason}`` for classes with empty, single or all-duplicate sets.
        num_samples: samples diagnosed (with stored features).
        skipped: ``{filepath: reason}`` for samples without valid stored features.
        pruned_set: the name the proposed pruned set was saved under (or None).
        removed: ``[(class, attribute, reasons)]`` the pruned set drops.
    """

    attributes: list[AttributeDiagnosis]
    degenerate: dict[str, str]
    num_samples: int
    skipped: dict[str, str]
    pruned_set: str | None = None
    removed: list = field(default_factory=list)

    @property
    def flagged(self) -> list[AttributeDiagnosis]:
        return [a for a in self.attributes if a.flags]

    def table(self, only_flagged: bool = False) -> str:
        """A plain-text table (one row per attribute)."""
        rows = [("class", "attribute", "top-rate", "AUC", "n", "flags")]
        for a in self.flagged if only_flagged else self.attributes:
            rows.append(
                (
                    a.class_name,
                    a.attribute[:48],
                    f"{a.top_rate:.3f}",
                    "-" if a.auc is None else f"{a.auc:.3f}",
                    str(a.num_class_samples),
                    ", ".join(a.flags),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for c, why in self.degenerate.items():
            lines.append(f"degenerate class {c!r}: {why}")
        return "\n".join(lines)


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")[:40] or "x"


def class_slugs(classes: Any) -> dict[str, str]:
    """``{class: slug}`` for view names: lower-case words joined by ``-``;
    classes whose slugs would collide (names differing only in punctuation
    or case, e.g. ``Crow/Raven`` and ``Crow Raven``) get the first 6 hex
    digits of the exact name's SHA-1 appended, so every class has its own."""
    base = {c: _slug(c) for c in classes}
    count: dict[str, int] = {}
    for b in base.values():
        count[b] = count.get(b, 0) + 1
    return {
        c: b if count[b] == 1 else f"{b}-{hashlib.sha1(c.encode('utf-8')).hexdigest()[:6]}"
        for c, b in base.items()
    }


def attribute_doctor(
    samples: Any,
    *,
    from_field: str,
    gt_field: str | None = None,
    attribute_set: Any = None,
    config: DoctorConfig | None = None,
    save_views: bool = True,
    save_pruned_as: str | None = "",
    model: Any = None,
    progress: Any = None,
    **params: Any,
) -> DoctorReport:
    """Diagnose an attribute set on ``samples`` from the features stored by
    the run on ``from_field``.

    Args:
        samples: a FiftyOne dataset or view.
        from_field: label field of a run made with ``store_features``.
        gt_field: Classification field giving each sample's class for the AUC
            (default: the run's predicted labels in ``from_field``).
        attribute_set: the set to diagnose (default: the run's, as recorded).
        config: the thresholds and scope (:class:`DoctorConfig`);
            ``**params`` override single fields (``min_auc=0.6``).
        save_views: save one view per flagged attribute that holds samples
            (``doctor-<from_field>-<class>-<i>``, so a dataset's doctor views
            list together by field and class: the class's samples, ordered by
            the attribute's contribution, highest first; classes whose names
            differ only in punctuation or case get a short hash of the exact
            name, e.g. ``crow-raven-1a2b3c``); at most ``config.max_views``.
        save_pruned_as: name for the proposed pruned set ("" = ``<set>-pruned``,
            shortened with a digest when that exceeds 64 characters, see
            :func:`fiftyone_lazsl.fo.store.derived_set_name`;
            None = do not save). It drops flagged attributes (keeping the first
            of each near-duplicate group and never emptying a class) and
            records ``parent`` and the removed attributes in its metadata.
        model: a loaded model to use (see :func:`fiftyone_lazsl.rescore`).
        progress: ``progress(fraction, stage_text)`` called as the stages
            advance (encoding prompts, scoring ``k/N`` samples, saving), or None.

    Returns:
        a :class:`DoctorReport`.

    Raises:
        ConfigError: ``from_field`` has no stored features; unknown ``gt_field``;
            a threshold out of its domain.
    """
    dc = (config or DoctorConfig()).replace(**params)
    dup_threshold, min_auc, min_top_rate = dc.dup_threshold, dc.min_auc, dc.min_top_rate
    max_views, batch_size, all_classes = dc.max_views, dc.batch_size, dc.all_classes
    dataset = dataset_of(samples)
    old = stored_run(samples, from_field)
    if gt_field is not None and gt_field not in dataset.get_field_schema():
        raise ConfigError(f"dataset {dataset.name!r} has no field {gt_field!r}")
    if attribute_set is None:
        aset = recorded_attribute_set(dataset, old)
    else:
        aset = to_attribute_set(attribute_set, dataset)
    report_progress = progress or (lambda fraction, text: None)
    label_path = f"{gt_field}.label" if gt_field else f"{from_field}.label"
    ids, paths, labels = samples.values(["id", "filepath", label_path])
    full_set = aset
    if not all_classes:
        present = {aset.resolve(lb) for lb in labels if lb is not None} - {None}
        keep = [c for c in aset.classes if c in present]
        if keep and len(keep) < len(aset.classes):
            aset = AttributeSet.from_dict(
                {c: list(aset.attributes[c]) for c in keep},
                name=aset.name,
                source=aset.source,
                format=aset.format,
                metadata=dict(aset.metadata or {}),
            )
    cfg = LaZSLConfig.from_dict(old, strict=False).replace(method="lazsl", batch_size=batch_size)
    n_attrs = sum(len(a) for a in aset.attributes.values())
    report_progress(0.0, f"encoding {n_attrs} attribute prompts of {len(aset.classes)} classes")
    clf = (
        LaZSLClassifier(aset, model=model, config=cfg)
        if model is not None
        else LaZSLClassifier(aset, config=cfg)
    )
    rec = old["feature_store"]
    fp = fingerprint(feature_spec(clf))
    if fp != rec["fingerprint"]:
        raise ConfigError(
            f"the stored features of the run on {from_field!r} were made with "
            "another model or visual set; classify again with --store-features"
        )
    store = FeatureStore(
        rec["path"], dtype=rec.get("dtype", "float16"), check=rec.get("check", "stat")
    )

    classes = list(clf.classes)
    lens = [len(a) for a in clf.attribute_labels]
    crops = [np.zeros(n) for n in lens]
    contrib: list[list[np.ndarray]] = [[] for _ in classes]
    kept_ids, kept_labels, skipped = [], [], {}
    for s in range(0, len(paths), batch_size):
        found, why = store.get_many(fp, paths[s : s + batch_size])
        skipped.update(why)
        es = [(i, found[p]) for i, p in enumerate(paths[s : s + batch_size], s) if p in found]
        if not es:
            continue
        preds = predict_entries(clf, [e for _, e in es])
        for (i, _), p in zip(es, preds):
            for c in range(len(classes)):
                crops[c] += p.attribute_crops[c]
                contrib[c].append(p.attribute_scores[c])
            kept_ids.append(ids[i])
            kept_labels.append(full_set.resolve(labels[i]) if labels[i] is not None else None)
        done = min(s + batch_size, len(paths))
        report_progress(0.9 * done / max(len(paths), 1), f"scoring samples {done}/{len(paths)}")
    store.close()

    # Near-duplicates compare the attribute texts themselves: the prompts
    # embed the class name ("{class}, which has ..."), which would hide
    # attributes shared across classes.
    flat = [a for names in clf.attribute_labels for a in names]
    emb = clf.model.encode_texts(flat).cpu().numpy() if flat else np.zeros((0, 1), np.float32)
    text = np.zeros((len(classes), max(lens) if lens else 0, emb.shape[1]), np.float32)
    k = 0
    for c, n in enumerate(lens):
        text[c, :n] = emb[k : k + n]
        k += n
    diags = _diagnose(
        classes,
        clf.attribute_labels,
        lens,
        crops,
        contrib,
        kept_labels,
        text,
        dup_threshold,
        min_auc,
        min_top_rate,
    )
    degenerate = _degenerate(classes, lens, diags)
    report = DoctorReport(
        attributes=diags, degenerate=degenerate, num_samples=len(kept_ids), skipped=skipped
    )
    if save_views:
        report_progress(0.95, f"saving views of {len(report.flagged)} flagged attributes")
        _save_views(
            dataset, from_field, report, kept_ids, kept_labels, contrib, max_views, full_set.classes
        )
    if save_pruned_as is not None:
        report_progress(0.98, "saving the proposed pruned set")
        _save_pruned(dataset, full_set, report, save_pruned_as)
    report_progress(1.0, f"{len(report.flagged)} of {len(report.attributes)} attributes flagged")
    return report


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return float(roc_auc_score(y, np.r_[pos, neg]))


def _diagnose(
    classes, names, lens, crops, contrib, labels, text, thr, min_auc, min_top
) -> list[AttributeDiagnosis]:
    C = len(classes)
    flat = [(c, a) for c in range(C) for a in range(lens[c])]
    emb = np.stack([text[c, a] for c, a in flat]) if flat else np.zeros((0, 1))
    sim = emb @ emb.T if len(flat) else np.zeros((0, 0))
    pos_of = {ca: i for i, ca in enumerate(flat)}
    out = []
    for c in range(C):
        mine = np.array([lb == classes[c] for lb in labels], dtype=bool)
        scores = np.stack(contrib[c]) if contrib[c] else np.zeros((0, lens[c]))
        total = crops[c].sum()
        for a in range(lens[c]):
            i = pos_of[(c, a)]
            d = AttributeDiagnosis(
                class_name=classes[c],
                index=a,
                attribute=names[c][a],
                top_rate=float(crops[c][a] / total) if total else 0.0,
                auc=_auc(scores[mine, a], scores[~mine, a]) if len(scores) else None,
                num_class_samples=int(mine.sum()),
            )
            for j in np.nonzero(sim[i] >= thr)[0]:
                c2, a2 = flat[j]
                if j == i:
                    continue
                if c2 == c:
                    d.duplicates_within.append(names[c2][a2])
                    if a2 < a:
                        d.flags.append("duplicate")
                else:
                    d.duplicates_across.append(f"{classes[c2]}: {names[c2][a2]}")
            d.flags = sorted(set(d.flags))
            if d.duplicates_across:
                d.flags.append("shared-with-other-class")
            if len(scores) and d.top_rate <= min_top:
                d.flags.append("never-top")
            if d.auc is not None and d.auc < min_auc:
                d.flags.append("weak")
            out.append(d)
    return out


def _degenerate(classes, lens, diags) -> dict[str, str]:
    out = {}
    for c, n in zip(classes, lens):
        mine = [d for d in diags if d.class_name == c]
        if n == 0:
            out[c] = "no attributes"
        elif n == 1:
            out[c] = "a single attribute"
        elif all(d.duplicates_within for d in mine):
            out[c] = "all attributes are near-duplicates"
    return out


def _save_views(dataset, from_field, report, ids, labels, contrib, max_views, all_classes) -> None:
    classes = list(dict.fromkeys(d.class_name for d in report.attributes))
    slugs = class_slugs(all_classes)
    n = 0
    for d in report.flagged:
        if n >= max_views:
            break
        c = classes.index(d.class_name)
        rows = [
            (float(contrib[c][k][d.index]), ids[k])
            for k in range(len(ids))
            if labels[k] == d.class_name
        ]
        if not rows:
            continue
        rows.sort(key=lambda r: -r[0])
        name = f"doctor-{_slug(from_field)}-{slugs[d.class_name]}-{d.index}"
        dataset.save_view(
            name,
            dataset.select([r[1] for r in rows], ordered=True),
            description=f"{d.class_name}: {d.attribute} ({', '.join(d.flags)})",
            overwrite=True,
        )
        d.saved_view = name
        n += 1


def _save_pruned(dataset, aset, report, name) -> None:
    drop = {(d.class_name, d.index): d.flags for d in report.flagged}
    new, removed = {}, []
    for c, attrs in aset.attributes.items():
        kept = [i for i in range(len(attrs)) if (c, i) not in drop]
        if not kept and attrs:  # never empty a class: keep its most discriminative attribute
            mine = [d for d in report.attributes if d.class_name == c]
            best = max(mine, key=lambda d: (d.auc if d.auc is not None else 0.5, d.top_rate))
            kept = [best.index]
        for i, a in enumerate(attrs):
            if i not in kept:  # by position: a dropped duplicate has the text of a kept one
                removed.append((c, a, list(drop.get((c, i), []))))
        new[c] = [attrs[i] for i in kept]
    if not removed:
        return
    parent = aset.name or "set"
    out = AttributeSet.from_dict(
        new,
        name=name or derived_set_name(parent, "-pruned"),
        source=f"doctor:{parent}",
        format=aset.format,
        metadata={
            "parent": parent,
            "parent_hash": aset.content_hash,
            "edit": {"removed": [[c, a, r] for c, a, r in removed]},
        },
    )
    report.pruned_set = save_attribute_set(dataset, out, name=out.name)
    report.removed = removed
