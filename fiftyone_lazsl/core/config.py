"""``LaZSLConfig`` (every LaZSL parameter) and ``OutputConfig`` (what a run
writes), each declared once.

The classifier (:class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier`),
:func:`~fiftyone_lazsl.fo.apply.run_lazsl`, the ``classify`` CLI (flags derived
from the fields below, one to one) and the ``run_lazsl`` operator form all take
their parameters from this one dataclass, so defaults, meanings and validation
cannot drift between them. ``to_dict`` / ``from_dict`` give the JSON form stored
in a run's config, and :meth:`LaZSLConfig.output_diff` compares two configs when
a run is resumed.

:class:`OutputConfig` is declared the same way for the options that decide
what a run writes besides the prediction (crops kept as detections, evidence,
heatmaps, write batching, feature storage): one field, one default, one
validation, one CLI flag (:meth:`OutputConfig.add_cli_arguments`); every
writing entry point (``run_lazsl``, ``rescore``, ``queue_shards``, the zoo
model) takes it as ``output=``.

Modelled on open_clip's ``PreprocessCfg`` (a frozen dataclass of plain values).
Torch-free: importing this module loads neither torch nor FiftyOne.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fiftyone_lazsl.errors import ConfigError

__all__ = [
    "LaZSLConfig",
    "OutputConfig",
    "METHODS",
    "METHOD_DEFAULTS",
    "CROP_METHODS",
    "ATTRIBUTE_METHODS",
    "CROP_BACKENDS",
    "EXACT_CROP_BACKENDS",
    "PROMPT_STYLES",
    "RANDOM_WEIGHT_TAGS",
    "normalize_pretrained",
    "EVIDENCE_MODES",
    "DEFAULT_TOP_K_CROPS",
    "DEFAULT_RUNNER_UPS",
    "FEATURE_DTYPES",
]

#: Scoring methods: LaZSL, WCA (Li et al., ICML 2024) and the two baselines of
#: the LaZSL paper's tables.
METHODS = ("lazsl", "wca", "dclip", "clip")
#: Defaults of the visual-set parameters that depend on the method: each
#: method's published configuration (LaZSL paper: 90 crops of side
#: U(0.6, 0.9); WCA's ``cfgs/*.yaml``: 60 crops, alpha 0.5, beta 0.9). Used
#: only for parameters not given; a value given by the user (or read from a
#: run's config, e.g. when re-scoring stored features) always wins.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lazsl": {"n_crops": 90, "crop_scale": (0.6, 0.9)},
    "wca": {"n_crops": 60, "crop_scale": (0.5, 0.9)},
}
#: How crops are made (see docs/crops.md): ``"auto"`` (default: ``"device"`` when
#: the model runs on CUDA, else ``"pil"``), ``"pil"`` (the official construction:
#: each square box cut from the decoded PIL image and sent through the model's
#: own open_clip preprocessing, in the decode workers; exact), ``"device"`` (the
#: same views, byte for byte: Pillow's integer resampling reproduced on the
#: model's device from the decoded image) or ``"tensor"``
#: (``torchvision.ops.roi_align`` on the model's device: an approximation, mean
#: |difference| ~0.012-0.017, max ~0.9 in normalised units).
CROP_BACKENDS = ("auto", "pil", "device", "tensor")
#: Backends whose views are identical (interchangeable for resume and re-scoring).
EXACT_CROP_BACKENDS = ("pil", "device")
#: Prompt rules (see :mod:`fiftyone_lazsl.core.prompts`).
PROMPT_STYLES = ("dclip", "legacy")
#: The integers a run record can hold (MongoDB stores BSON int64).
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
#: Spellings of "no pretrained weights" (random initialisation, tests only).
RANDOM_WEIGHT_TAGS = ("", "none", "random")

#: What a run keeps of each sample's per-attribute evidence (see
#: :mod:`fiftyone_lazsl.fo.labels`): ``"compact"`` (predicted class, runner-ups,
#: ground-truth class) or ``"full"`` (every class too).
EVIDENCE_MODES = ("compact", "full")
#: Crops kept as detections by default with compact evidence (best-matching
#: first): few enough that their boxes and labels stay readable on the image.
DEFAULT_TOP_K_CROPS = 5
#: Runner-up classes whose evidence is stored by default.
DEFAULT_RUNNER_UPS = 1
#: Storage precisions of a feature store.
FEATURE_DTYPES = ("float16", "float32")

_ALL = METHODS
#: The two numbers forms and flags give for ``crop_scale``.
_CROP_BOUNDS = ("crop_min", "crop_max")
_OT = ("lazsl",)
#: Methods that score crops (and so use the visual-set parameters).
CROP_METHODS = ("lazsl", "wca")
#: Methods that score with the attribute set's texts (and write ``F_attributes``).
ATTRIBUTE_METHODS = ("lazsl", "wca", "dclip")
_ATTR = ATTRIBUTE_METHODS
_WCA = ("wca",)


def _meta(
    help: str,
    *,
    methods: tuple[str, ...] = _ALL,
    group: str,
    output: bool = True,
    choices: tuple | None = None,
    unit: str = "",
    advanced: bool = False,
) -> dict:
    """Field metadata: ``help`` (one line), the methods that use the parameter,
    its ``group`` (model / visual set / semantic set / transport / weighting /
    execution), whether it changes a sample's outputs (``output``; resuming compares only
    those), ``choices``, ``unit`` and whether forms hide it by default."""
    return {
        "help": help,
        "methods": methods,
        "group": group,
        "output": output,
        "choices": choices,
        "unit": unit,
        "advanced": advanced,
    }


def normalize_pretrained(pretrained: Any) -> str | None:
    """``None`` for every spelling of random weights (``None``, ``""``,
    ``"none"``, ``"random"``, any case), else the string given.

    The one place where "random weights" is recognised; used by the config,
    the CLI, the operator and :func:`fiftyone_lazsl.core.models.load_model`.
    """
    if pretrained is None:
        return None
    s = str(pretrained).strip()
    return None if s.lower() in RANDOM_WEIGHT_TAGS else s


@dataclass(frozen=True)
class LaZSLConfig:
    """LaZSL parameters (Chen et al., ICCV 2025, Sec. 3), with their defaults.

    Attributes:
        method: ``"lazsl"`` (crops aligned to attributes by optimal transport),
            ``"wca"`` (weighted crops against label-weighted sentences, Li et
            al., ICML 2024), ``"dclip"`` (mean global-view similarity over a
            class's attributes) or ``"clip"`` (one ``"a photo of a {class}."``
            prompt per class).
        model: open_clip model name (``open_clip.list_models()``) or ``hf-hub:`` id.
        pretrained: open_clip tag, ``hf-hub:`` id, checkpoint file or folder, or
            None for random weights (tests only; recorded as such).
        device: torch device string; None picks CUDA when available.
        n_crops: crops per image ``N`` (default: the method's, see
            :data:`METHOD_DEFAULTS`: LaZSL 90, WCA 60). The visual set has ``1 + N`` views.
        crop_scale: ``(alpha, beta)``: crop side ``~ U(alpha, beta) * min(H, W)``,
            fractions of the short side (default: the method's: LaZSL
            ``(0.6, 0.9)``, WCA ``(0.5, 0.9)``). Not given (None), ``n_crops`` and
            ``crop_scale`` take the method's default and follow the method in
            :meth:`replace`; given, they stay (one visual set for every method).
        crop_backend: how crops are cut and resized (see :data:`CROP_BACKENDS`).
        seed: user seed; each image's crops are drawn from ``(seed, sample key)``.
        theta: weight of the crop term in the hybrid similarity
            ``S = (1 - theta) g.t + theta x_n.t`` (paper: 0.8), in ``[0, 1]``.
        eps: Sinkhorn entropic regularisation (paper: 0.1), ``> 0``.
        gamma: vision-selection margin: crops with mean similarity below the
            image mean plus ``gamma`` are dropped (official code: 0).
        max_iter: Sinkhorn iterations at most (official code: 100).
        stop_tol: Sinkhorn stops when ``mean |r - r_prev| < stop_tol`` (official: 0.01).
        image_scale_log: WCA crop-weight temperature, ``w_n = softmax(exp(.) x_n.g)`` (4.0).
        text_scale_log: WCA sentence-weight temperature,
            ``v_a = softmax(exp(.) t_a.l_c)`` (2.0).
        prompt_style: ``"dclip"`` or ``"legacy"`` (official ``startswith('a')`` rule).
        prompt_suffix: appended to every prompt (official ImageNet runs use ``"."``).
        batch_size: images per forward pass (each has ``1 + N`` views).

    Raises:
        fiftyone_lazsl.errors.ConfigError: (a ``UserError`` and ``ValueError``)
            naming the parameter, when a value is out of its domain.
    """

    method: str = field(
        default="lazsl", metadata=_meta("scoring method", group="model", choices=METHODS)
    )
    model: str = field(
        default="ViT-B-32", metadata=_meta("open_clip model name or hf-hub:ID", group="model")
    )
    pretrained: str | None = field(
        default="openai",
        metadata=_meta(
            "weights: open_clip tag, hf-hub:ID, checkpoint path, or 'none' for random weights "
            "(tests only)",
            group="model",
        ),
    )
    device: str | None = field(
        default=None,
        metadata=_meta(
            "torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)",
            group="execution",
            output=False,
        ),
    )
    n_crops: int = field(
        default=None,
        metadata=_meta(  # type: ignore[assignment]
            "crops per image N", methods=CROP_METHODS, group="visual set", unit="crops"
        ),
    )
    crop_scale: tuple[float, float] = field(
        default=None,
        metadata=_meta(  # type: ignore[assignment]
            "(alpha, beta): crop side ~ U(alpha, beta) * min(H, W)",
            methods=CROP_METHODS,
            group="visual set",
            unit="fraction of the short side",
        ),
    )
    crop_backend: str = field(
        default="auto",
        metadata=_meta(
            "crop construction: 'pil' (official: model preprocessing of each cut-out box, in the "
            "decode workers), 'device' (the same views bit for bit, resampled on the model's "
            "device), 'tensor' (roi_align, approximate) or 'auto' (device on CUDA, else pil)",
            methods=CROP_METHODS,
            group="visual set",
            choices=CROP_BACKENDS,
            advanced=True,
        ),
    )
    seed: int = field(
        default=0,
        metadata=_meta(
            "crop seed (combined with each sample's key)", methods=CROP_METHODS, group="visual set"
        ),
    )
    theta: float = field(
        default=0.8,
        metadata=_meta(
            "weight of the crop term in the hybrid similarity, in [0, 1]",
            methods=_OT,
            group="transport",
        ),
    )
    eps: float = field(
        default=0.1,
        metadata=_meta(
            "Sinkhorn entropic regularisation (> 0)", methods=_OT, group="transport", advanced=True
        ),
    )
    gamma: float = field(
        default=0.0,
        metadata=_meta(
            "vision-selection margin over the image's mean crop similarity",
            methods=_OT,
            group="transport",
            advanced=True,
        ),
    )
    max_iter: int = field(
        default=100,
        metadata=_meta(
            "Sinkhorn iterations at most", methods=_OT, group="transport", advanced=True
        ),
    )
    stop_tol: float = field(
        default=1e-2,
        metadata=_meta(
            "Sinkhorn stopping tolerance on mean |r - r_prev|",
            methods=_OT,
            group="transport",
            advanced=True,
        ),
    )
    image_scale_log: float = field(
        default=4.0,
        metadata=_meta(
            "WCA crop weights softmax(exp(image_scale_log) * crop.global): log temperature",
            methods=_WCA,
            group="weighting",
        ),
    )
    text_scale_log: float = field(
        default=2.0,
        metadata=_meta(
            "WCA sentence weights softmax(exp(text_scale_log) * sentence.label prompt): "
            "log temperature",
            methods=_WCA,
            group="weighting",
        ),
    )
    prompt_style: str = field(
        default="dclip",
        metadata=_meta(
            "prompt rule: 'dclip' or 'legacy' (official startswith('a') test)",
            methods=_ATTR,
            group="semantic set",
            choices=PROMPT_STYLES,
            advanced=True,
        ),
    )
    prompt_suffix: str = field(
        default="",
        metadata=_meta(
            "text appended to every prompt (official ImageNet runs use '.')",
            methods=_ATTR,
            group="semantic set",
            advanced=True,
        ),
    )
    batch_size: int = field(
        default=4,
        metadata=_meta("images per forward pass", group="execution", output=False, unit="images"),
    )

    def __post_init__(self) -> None:
        # Normalise types first (CLI / JSON / form values), then check domains.
        set_ = object.__setattr__
        _choice("method", self.method, METHODS)
        auto = []
        for name, value in METHOD_DEFAULTS.get(self.method, METHOD_DEFAULTS["lazsl"]).items():
            if getattr(self, name) is None:
                set_(self, name, value)
                auto.append(name)
        # Parameters that took the method's default (not part of equality).
        set_(self, "_method_defaults", frozenset(auto))
        set_(self, "pretrained", normalize_pretrained(self.pretrained))
        if self.device is not None:
            set_(self, "device", str(self.device).strip() or None)
        cs = self.crop_scale
        if isinstance(cs, (int, float)) or not isinstance(cs, Iterable) or len(tuple(cs)) != 2:
            raise ConfigError(f"crop_scale must be two numbers (alpha, beta), got {cs!r}")
        set_(self, "crop_scale", (_num("crop_scale", cs[0]), _num("crop_scale", tuple(cs)[1])))
        for name in ("n_crops", "seed", "max_iter", "batch_size"):
            set_(self, name, _int(name, getattr(self, name)))
        for name in ("theta", "eps", "gamma", "stop_tol", "image_scale_log", "text_scale_log"):
            set_(self, name, _num(name, getattr(self, name)))
        set_(self, "prompt_suffix", "" if self.prompt_suffix is None else str(self.prompt_suffix))
        self._validate()

    def _validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("crop_backend", self.crop_backend, CROP_BACKENDS)
        _choice("prompt_style", self.prompt_style, PROMPT_STYLES)
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("model must be a non-empty open_clip model name")
        if self.n_crops < 1 and self.method in CROP_METHODS:
            raise ConfigError(f"n_crops must be >= 1 for {self.method}, got {self.n_crops}")
        if self.n_crops < 0:
            raise ConfigError(f"n_crops must be >= 0, got {self.n_crops}")
        a, b = self.crop_scale
        if not (0 < a <= b <= 1):
            raise ConfigError(f"crop_scale must satisfy 0 < alpha <= beta <= 1, got ({a:g}, {b:g})")
        if not 0.0 <= self.theta <= 1.0:
            raise ConfigError(f"theta must be in [0, 1], got {self.theta:g}")
        if not self.eps > 0:
            raise ConfigError(f"eps must be > 0, got {self.eps:g}")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if not self.stop_tol >= 0:
            raise ConfigError(f"stop_tol must be >= 0, got {self.stop_tol:g}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")

    # ------------------------------------------------------------ conversions
    def to_dict(self) -> dict:
        """JSON-serialisable dict of every field (``crop_scale`` as a list)."""
        d = dataclasses.asdict(self)
        d["crop_scale"] = list(self.crop_scale)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = True) -> LaZSLConfig:
        """Build from a dict such as :meth:`to_dict`'s or a run's config.

        Args:
            d: parameter values; missing keys take their defaults.
            strict: refuse unknown keys (else they are ignored, e.g. the other
                keys of a run config).

        Raises:
            ConfigError: an unknown key (with ``strict``) or a bad value.
        """
        return _from_dict(cls, d, strict, "LaZSL parameter")

    def replace(self, **changes: Any) -> LaZSLConfig:
        """A copy with some parameters changed (validated). Parameters that
        took the method's default (``n_crops``, ``crop_scale`` not given) follow
        a change of ``method``; given ones are kept.

        Raises:
            ConfigError: an unknown parameter or a bad value.
        """
        d = self.to_dict()
        for name in getattr(self, "_method_defaults", ()):
            d[name] = None
        return self.from_dict({**d, **changes})

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every parameter, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def fields_for(cls, method: str) -> tuple[dataclasses.Field, ...]:
        """The parameters ``method`` uses (forms show only these)."""
        return tuple(f for f in dataclasses.fields(cls) if method in f.metadata["methods"])

    def output_diff(self, other: LaZSLConfig | Mapping[str, Any]) -> list[str]:
        """Names of the output-determining parameters (field metadata
        ``output=True``: everything but ``device`` and ``batch_size``, whose
        values never change a sample's result) that differ from ``other``."""
        o = other if isinstance(other, LaZSLConfig) else LaZSLConfig.from_dict(other, strict=False)
        return [
            f.name
            for f in dataclasses.fields(self)
            if f.metadata["output"]
            and _views(f.name, getattr(self, f.name)) != _views(f.name, getattr(o, f.name))
        ]

    # --------------------------------------------------------------------- CLI
    @classmethod
    def cli_flag(cls, name: str) -> str:
        """The command-line flag of a parameter (``n_crops`` -> ``--n-crops``)."""
        return "--" + name.replace("_", "-")

    @classmethod
    def add_cli_arguments(
        cls, parser: argparse.ArgumentParser, exclude: Iterable[str] = ()
    ) -> None:
        """Add one flag per parameter to ``parser`` (defaults shown in ``--help``).

        ``crop_scale`` takes two numbers (``--crop-scale 0.6 0.9``); the older
        ``--crop-min`` / ``--crop-max`` set one bound each and stay accepted.
        Flags default to None so :meth:`from_cli_args` can tell "not given".
        """
        exclude = set(exclude)
        group = parser.add_argument_group("LaZSL parameters (see LaZSLConfig)")
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            m, flag = f.metadata, cls.cli_flag(f.name)
            default = f.default
            if f.name in METHOD_DEFAULTS["lazsl"]:
                help_ = (
                    m["help"]
                    + " (default: "
                    + ", ".join(f"{_show(v[f.name])} for {k}" for k, v in METHOD_DEFAULTS.items())
                    + ")"
                )
            else:
                help_ = f"{m['help']} (default: {_show(default)})"
            if f.name == "crop_scale":
                group.add_argument(
                    flag, type=float, nargs=2, metavar=("ALPHA", "BETA"), default=None, help=help_
                )
                group.add_argument(
                    "--crop-min",
                    type=float,
                    default=None,
                    metavar="ALPHA",
                    help="smallest crop side / min(H, W) (same as the first --crop-scale value)",
                )
                group.add_argument(
                    "--crop-max",
                    type=float,
                    default=None,
                    metavar="BETA",
                    help="largest crop side / min(H, W)",
                )
                continue
            kind = _field_type(f)
            kw: dict = {"default": None, "help": help_}
            if m["choices"]:
                kw["choices"] = m["choices"]
            if kind in (int, float):
                kw["type"] = kind
            group.add_argument(flag, **kw)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, **overrides: Any) -> LaZSLConfig:
        """The config given by parsed flags (see :meth:`add_cli_arguments`);
        flags not given keep the defaults.

        Raises:
            ConfigError: a bad value, naming the flag's parameter.
        """
        values = {n: getattr(args, n, None) for n in cls.field_names() + _CROP_BOUNDS}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_form(values)

    @classmethod
    def from_form(cls, values: Mapping[str, Any]) -> LaZSLConfig:
        """The config given by flat values as a form or the command line gives
        them: every field by name (None or ``""``: not given) and
        ``crop_min`` / ``crop_max``, the two bounds of ``crop_scale`` (a bound
        not given is ``crop_scale``'s, else the method's default). The one
        place where the two numbers become ``crop_scale``; other keys are
        ignored.

        Raises:
            ConfigError: a bad value, naming the parameter.
        """
        d = {
            k: values[k]
            for k in cls.field_names()
            if values.get(k) is not None and values.get(k) != ""
        }
        lo, hi = (values.get(k) for k in _CROP_BOUNDS)
        if lo is not None or hi is not None:
            base = list(d.get("crop_scale", cls.crop_scale_default(d.get("method", "lazsl"))))
            d["crop_scale"] = (lo if lo is not None else base[0], hi if hi is not None else base[1])
        return cls.from_dict(d)

    def form_values(self) -> dict:
        """The inverse of :meth:`from_form`: every field set (``crop_scale`` as
        ``crop_min`` / ``crop_max``; random weights as ``"none"``, which a form
        cannot confuse with "not given")."""
        d = self.to_dict()
        d["crop_min"], d["crop_max"] = d.pop("crop_scale")
        if d["pretrained"] is None:
            d["pretrained"] = "none"
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def crop_scale_default(cls, method: str = "lazsl") -> tuple[float, float]:
        """The default ``(alpha, beta)`` of ``method`` (:data:`METHOD_DEFAULTS`;
        methods without crops: LaZSL's)."""
        return tuple(METHOD_DEFAULTS.get(method, METHOD_DEFAULTS["lazsl"])["crop_scale"])

    @classmethod
    def default_of(cls, name: str, method: str = "lazsl") -> Any:
        """The default of parameter ``name`` for ``method`` (the method's own
        default for ``n_crops`` / ``crop_scale``, else the field's).

        Raises:
            ConfigError: an unknown parameter.
        """
        if name not in cls.field_names():
            raise ConfigError(f"unknown LaZSL parameter {name!r}")
        return getattr(cls(method=method), name)


def _from_dict(cls: type, d: Mapping[str, Any], strict: bool, what: str) -> Any:
    """``cls(**d)`` for a config dataclass, refusing unknown keys with ``strict``
    (else ignoring them), naming them as ``what``s."""
    names = cls.field_names()
    unknown = sorted(k for k in d if k not in names)
    if strict and unknown:
        raise ConfigError(
            f"unknown {what}(s): {', '.join(unknown)}; expected some of: {', '.join(names)}"
        )
    return cls(**{k: v for k, v in d.items() if k in names})


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(_show(x) for x in v)
    if v is None:
        return "auto" if v is None else str(v)
    return repr(v) if isinstance(v, str) and v == "" else str(v)


def _field_type(f: dataclasses.Field) -> type:
    t = str(f.type)
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


def _choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _int(name: str, v: Any) -> int:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {v!r}") from None
    if not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if not INT64_MIN <= v <= INT64_MAX:
        raise ConfigError(
            f"{name} must be a 64-bit integer (at most {INT64_MAX}; runs are "
            f"recorded in MongoDB), got {v}"
        )
    return int(v)


def _num(name: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    return x


def _views(name: str, value: Any) -> Any:
    """``"pil"`` and ``"device"`` (and ``"auto"``, which is one of them) make the
    same views: equal as outputs."""
    exact = EXACT_CROP_BACKENDS + ("auto",)
    return "pil" if name == "crop_backend" and value in exact else value


def _out_meta(help: str, *, flag: str | None = None, scope: str = "all", **cli: Any) -> dict:
    """:class:`OutputConfig` field metadata: ``help`` (one line), the CLI
    ``flag`` (default ``--field-name``), ``scope`` (``"all"``: every writing
    command; ``"classify"``: only runs that encode images) and argparse keywords."""
    return {"help": help, "flag": flag, "scope": scope, "cli": cli}


def _top_k_crops_arg(value: str) -> int | str:
    """``--top-k-crops``: a positive integer, ``all`` or ``auto``; the range is
    checked by :class:`OutputConfig` (one line naming the parameter)."""
    v = value.strip().lower()
    if v in ("all", "auto"):
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, 'all' or 'auto', got {value!r}"
        ) from None


def _store_features_arg(value: str) -> bool | str:
    """``--store-features`` alone: the default location (True); with DIR: DIR."""
    return True if value == "" else value


@dataclass(frozen=True)
class OutputConfig:
    """What a run writes besides the prediction (not LaZSL parameters: they
    never change a logit), with its defaults.

    Attributes:
        top_k_crops: crops kept as detections in ``F_crops``, those that match
            their attribute best first: an integer >= 1, ``"all"`` (or None:
            every kept crop) or ``"auto"`` (default:
            :data:`DEFAULT_TOP_K_CROPS` with compact evidence, all with full
            evidence; resuming, the recorded run's).
        top_attributes: length of ``F_attributes`` (>= 1).
        evidence: ``"compact"`` (per-attribute evidence of the predicted class,
            ``runner_ups`` runner-ups and the ground-truth class) or ``"full"``
            (every class's arrays too); None (default): compact, or the recorded
            run's when resuming (see :mod:`fiftyone_lazsl.fo.labels`).
        runner_ups: runner-up classes whose evidence compact outputs keep
            (>= 0); None (default): :data:`DEFAULT_RUNNER_UPS`, or the recorded
            run's when resuming.
        heatmap: also write ``F_heatmap`` (LaZSL runs).
        write_every: samples per database write (>= 1; a killed run keeps
            every written batch).
        num_workers: image-decoding processes (None: automatic; 0: in process).
        store_features: keep each sample's view embeddings in a
            :class:`~fiftyone_lazsl.core.features.FeatureStore` for
            re-scoring: False (default), True (default location), a directory
            or a ``FeatureStore``.
        feature_dtype: storage precision of ``store_features``
            (:data:`FEATURE_DTYPES`).

    :meth:`resolved` fills the ``None`` / ``"auto"`` values; the run record
    holds :meth:`record` of the resolved config.

    Raises:
        fiftyone_lazsl.errors.ConfigError: naming the option, when a value is
            out of its domain.
    """

    top_k_crops: int | str | None = field(
        default="auto",
        metadata=_out_meta(
            "crops kept as detections, best-matching first: K, all, or auto (5 with compact "
            "evidence, all with full evidence)",
            metavar="K|all",
            type=_top_k_crops_arg,
        ),
    )
    top_attributes: int = field(
        default=5, metadata=_out_meta("attributes listed in F_attributes", metavar="K", type=int)
    )
    evidence: str | None = field(
        default=None,
        metadata=_out_meta(
            "per-attribute evidence of the predicted class, runner-up(s) and ground-truth "
            "class (compact, default), or of every class (full)",
            choices=EVIDENCE_MODES,
        ),
    )
    runner_ups: int | None = field(
        default=None,
        metadata=_out_meta(
            "runner-up classes whose evidence compact outputs keep (default: 1)",
            metavar="K",
            type=int,
        ),
    )
    heatmap: bool = field(
        default=False,
        metadata=_out_meta("also write an evidence heatmap per sample", action="store_true"),
    )
    write_every: int = field(
        default=64,
        metadata=_out_meta(
            "samples per database write (a killed run keeps every written batch)",
            metavar="N",
            type=int,
        ),
    )
    num_workers: int | None = field(
        default=None,
        metadata=_out_meta(
            "image decoding processes (default: auto; 0: in process)",
            flag="--workers",
            metavar="N",
            scope="classify",
            type=int,
        ),
    )
    store_features: Any = field(
        default=False,
        metadata=_out_meta(
            "keep every sample's view embeddings so `fiftyone-lazsl rescore` can re-score with "
            "other attribute sets without encoding again (default location: "
            "$FIFTYONE_LAZSL_FEATURES or <cache>/features; ~93 KB/sample at N=90, float16); "
            "features already stored are reused",
            scope="classify",
            nargs="?",
            const=True,
            metavar="DIR",
            type=_store_features_arg,
        ),
    )
    feature_dtype: str = field(
        default="float16",
        metadata=_out_meta(
            "storage precision of --store-features", scope="classify", choices=FEATURE_DTYPES
        ),
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        k = self.top_k_crops
        if isinstance(k, str) and k.strip().lower() in ("auto", "all"):
            set_(self, "top_k_crops", None if k.strip().lower() == "all" else "auto")
        elif k is not None:
            try:
                k = _int("top_k_crops", k)
            except ConfigError:
                raise ConfigError(f"top_k_crops must be >= 1, 'all' or 'auto', got {k!r}") from None
            if k < 1:
                raise ConfigError(
                    f"top_k_crops must be >= 1 (or 'all' for every kept crop), got {k}"
                )
            set_(self, "top_k_crops", k)
        if self.evidence is not None:
            _choice("evidence", self.evidence, EVIDENCE_MODES)
        if self.runner_ups is not None:
            try:
                n = _int("runner_ups", self.runner_ups)
            except ConfigError:
                n = -1
            if n < 0:
                raise ConfigError(f"runner_ups must be an integer >= 0, got {self.runner_ups!r}")
            set_(self, "runner_ups", n)
        for name, lo in (("top_attributes", 1), ("write_every", 1)):
            v = _int(name, getattr(self, name))
            if v < lo:
                raise ConfigError(f"{name} must be >= {lo}, got {v}")
            set_(self, name, v)
        if self.num_workers is not None:
            v = _int("num_workers", self.num_workers)
            if v < 0:
                raise ConfigError(f"num_workers must be >= 0 (0 = decode in process), got {v}")
            set_(self, "num_workers", v)
        if not isinstance(self.heatmap, bool):
            raise ConfigError(f"heatmap must be True or False, got {self.heatmap!r}")
        _choice("feature_dtype", self.feature_dtype, FEATURE_DTYPES)
        sf = self.store_features
        if sf is None:
            set_(self, "store_features", False)
        elif isinstance(sf, str) and not sf.strip():
            raise ConfigError(
                "store_features must be True/False, a directory or a FeatureStore, got ''"
            )
        elif not (
            isinstance(sf, (bool, str)) or hasattr(sf, "__fspath__") or hasattr(sf, "describe")
        ):
            raise ConfigError(
                f"store_features must be True/False, a directory or a FeatureStore, got {sf!r}"
            )

    # ------------------------------------------------------------ conversions
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every option, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = True) -> OutputConfig:
        """Build from a dict of options (missing keys take their defaults).

        Raises:
            ConfigError: an unknown key (with ``strict``) or a bad value.
        """
        return _from_dict(cls, d, strict, "output option")

    def replace(self, **changes: Any) -> OutputConfig:
        """A copy with some options changed (validated).

        Raises:
            ConfigError: an unknown option or a bad value.
        """
        return self.from_dict({**{n: getattr(self, n) for n in self.field_names()}, **changes})

    def resolved(self, recorded: Mapping[str, Any] | None = None) -> OutputConfig:
        """The options with every default made concrete: ``evidence``,
        ``runner_ups`` and ``top_k_crops="auto"`` take the ``recorded`` run's
        values when given (a resumed run writes what the interrupted one did;
        runs recorded before compact outputs wrote full evidence and every
        kept crop), else compact evidence, :data:`DEFAULT_RUNNER_UPS` and
        :data:`DEFAULT_TOP_K_CROPS` (compact) or every crop (full)."""
        rec = recorded or {}
        evidence = self.evidence
        if evidence is None:
            evidence = rec.get("evidence", "full") if recorded is not None else "compact"
        runner_ups = self.runner_ups
        if runner_ups is None:
            runner_ups = int(rec.get("runner_ups", DEFAULT_RUNNER_UPS))
        top_k = self.top_k_crops
        if top_k == "auto":
            if recorded is not None and evidence == rec.get("evidence", "full"):
                top_k = rec.get("top_k_crops")
            else:
                top_k = DEFAULT_TOP_K_CROPS if evidence == "compact" else None
        return self.replace(
            evidence=evidence, runner_ups=runner_ups, top_k_crops="all" if top_k is None else top_k
        )

    def record(self) -> dict:
        """The options a run record holds (``top_k_crops`` None: every kept crop)."""
        return {
            "top_k_crops": self.top_k_crops,
            "top_attributes": self.top_attributes,
            "evidence": self.evidence,
            "runner_ups": self.runner_ups,
        }

    # --------------------------------------------------------------------- CLI
    @classmethod
    def cli_flag(cls, name: str) -> str:
        """The command-line flag of an option (``top_k_crops`` -> ``--top-k-crops``;
        ``num_workers`` -> ``--workers``)."""
        f = {f.name: f for f in dataclasses.fields(cls)}[name]
        return f.metadata["flag"] or "--" + name.replace("_", "-")

    @classmethod
    def add_cli_arguments(
        cls, parser: Any, *, scope: str = "classify", exclude: Iterable[str] = ()
    ) -> None:
        """Add one flag per option to ``parser`` (an argparse parser or group).

        Args:
            parser: where the flags go.
            scope: ``"classify"`` (every option) or ``"all"`` (the options of
                commands that encode no image, e.g. ``rescore``: no
                ``--workers`` / ``--store-features`` / ``--feature-dtype``).
            exclude: option names left out.

        Flags default to None (``store_true`` flags to False) so
        :meth:`from_cli_args` can tell "not given".
        """
        exclude = set(exclude)
        for f in dataclasses.fields(cls):
            m = f.metadata
            if f.name in exclude or (scope == "all" and m["scope"] != "all"):
                continue
            kw = dict(m["cli"])
            default = f.default
            shown = (
                {"auto": "auto", None: "auto"}.get(default, default)
                if not isinstance(default, bool)
                else None
            )
            help_ = (
                m["help"]
                if shown is None or "default" in m["help"]
                else f"{m['help']} (default: {shown})"
            )
            if kw.get("action") != "store_true":
                kw.setdefault("default", None)
            parser.add_argument(cls.cli_flag(f.name), dest=f.name, help=help_, **kw)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, **overrides: Any) -> OutputConfig:
        """The options given by parsed flags (see :meth:`add_cli_arguments`);
        flags not given keep the defaults.

        Raises:
            ConfigError: a bad value, naming the option.
        """
        d = {n: getattr(args, n) for n in cls.field_names() if getattr(args, n, None) is not None}
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)
