"""``LaZSLConfig``: every LaZSL parameter, declared once.

The classifier (:class:`~fiftyone_lazsl.core.classifier.LaZSLClassifier`),
:func:`~fiftyone_lazsl.fo.apply.run_lazsl`, the ``classify`` CLI (flags derived
from the fields below, one to one) and the ``run_lazsl`` operator form all take
their parameters from this one dataclass, so defaults, meanings and validation
cannot drift between them. ``to_dict`` / ``from_dict`` give the JSON form stored
in a run's config, and :meth:`LaZSLConfig.output_diff` compares two configs when
a run is resumed.

Modelled on open_clip's ``PreprocessCfg`` (a frozen dataclass of plain values).
Torch-free: importing this module loads neither torch nor FiftyOne.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from fiftyone_lazsl.errors import ConfigError

__all__ = ["LaZSLConfig", "METHODS", "METHOD_DEFAULTS", "CROP_METHODS", "ATTRIBUTE_METHODS",
           "CROP_BACKENDS", "EXACT_CROP_BACKENDS", "PROMPT_STYLES", "RANDOM_WEIGHT_TAGS",
           "normalize_pretrained"]

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

_ALL = METHODS
_OT = ("lazsl",)
#: Methods that score crops (and so use the visual-set parameters).
CROP_METHODS = ("lazsl", "wca")
#: Methods that score with the attribute set's texts (and write ``F_attributes``).
ATTRIBUTE_METHODS = ("lazsl", "wca", "dclip")
_ATTR = ATTRIBUTE_METHODS
_WCA = ("wca",)


def _meta(help: str, *, methods: tuple[str, ...] = _ALL, group: str,
          output: bool = True, choices: tuple | None = None, unit: str = "",
          advanced: bool = False) -> dict:
    """Field metadata: ``help`` (one line), the methods that use the parameter,
    its ``group`` (model / visual set / semantic set / transport / weighting /
    execution), whether it changes a sample's outputs (``output``; resuming compares only
    those), ``choices``, ``unit`` and whether forms hide it by default."""
    return {"help": help, "methods": methods, "group": group, "output": output,
            "choices": choices, "unit": unit, "advanced": advanced}


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

    method: str = field(default="lazsl", metadata=_meta(
        "scoring method", group="model", choices=METHODS))
    model: str = field(default="ViT-B-32", metadata=_meta(
        "open_clip model name or hf-hub:ID", group="model"))
    pretrained: str | None = field(default="openai", metadata=_meta(
        "weights: open_clip tag, hf-hub:ID, checkpoint path, or 'none' for random weights "
        "(tests only)", group="model"))
    device: str | None = field(default=None, metadata=_meta(
        "torch device, e.g. cpu, cuda, cuda:1 (default: cuda when available)",
        group="execution", output=False))
    n_crops: int = field(default=None, metadata=_meta(  # type: ignore[assignment]
        "crops per image N", methods=CROP_METHODS, group="visual set", unit="crops"))
    crop_scale: tuple[float, float] = field(default=None, metadata=_meta(  # type: ignore[assignment]
        "(alpha, beta): crop side ~ U(alpha, beta) * min(H, W)", methods=CROP_METHODS,
        group="visual set", unit="fraction of the short side"))
    crop_backend: str = field(default="auto", metadata=_meta(
        "crop construction: 'pil' (official: model preprocessing of each cut-out box, in the "
        "decode workers), 'device' (the same views bit for bit, resampled on the model's "
        "device), 'tensor' (roi_align, approximate) or 'auto' (device on CUDA, else pil)",
        methods=CROP_METHODS, group="visual set", choices=CROP_BACKENDS, advanced=True))
    seed: int = field(default=0, metadata=_meta(
        "crop seed (combined with each sample's key)", methods=CROP_METHODS, group="visual set"))
    theta: float = field(default=0.8, metadata=_meta(
        "weight of the crop term in the hybrid similarity, in [0, 1]", methods=_OT,
        group="transport"))
    eps: float = field(default=0.1, metadata=_meta(
        "Sinkhorn entropic regularisation (> 0)", methods=_OT, group="transport",
        advanced=True))
    gamma: float = field(default=0.0, metadata=_meta(
        "vision-selection margin over the image's mean crop similarity", methods=_OT,
        group="transport", advanced=True))
    max_iter: int = field(default=100, metadata=_meta(
        "Sinkhorn iterations at most", methods=_OT, group="transport", advanced=True))
    stop_tol: float = field(default=1e-2, metadata=_meta(
        "Sinkhorn stopping tolerance on mean |r - r_prev|", methods=_OT, group="transport",
        advanced=True))
    image_scale_log: float = field(default=4.0, metadata=_meta(
        "WCA crop weights softmax(exp(image_scale_log) * crop.global): log temperature",
        methods=_WCA, group="weighting"))
    text_scale_log: float = field(default=2.0, metadata=_meta(
        "WCA sentence weights softmax(exp(text_scale_log) * sentence.label prompt): "
        "log temperature", methods=_WCA, group="weighting"))
    prompt_style: str = field(default="dclip", metadata=_meta(
        "prompt rule: 'dclip' or 'legacy' (official startswith('a') test)", methods=_ATTR,
        group="semantic set", choices=PROMPT_STYLES, advanced=True))
    prompt_suffix: str = field(default="", metadata=_meta(
        "text appended to every prompt (official ImageNet runs use '.')", methods=_ATTR,
        group="semantic set", advanced=True))
    batch_size: int = field(default=4, metadata=_meta(
        "images per forward pass", group="execution", output=False, unit="images"))

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
            raise ConfigError(
                f"crop_scale must satisfy 0 < alpha <= beta <= 1, got ({a:g}, {b:g})")
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
    def from_dict(cls, d: Mapping[str, Any], *, strict: bool = True) -> "LaZSLConfig":
        """Build from a dict such as :meth:`to_dict`'s or a run's config.

        Args:
            d: parameter values; missing keys take their defaults.
            strict: refuse unknown keys (else they are ignored, e.g. the other
                keys of a run config).

        Raises:
            ConfigError: an unknown key (with ``strict``) or a bad value.
        """
        names = cls.field_names()
        unknown = sorted(k for k in d if k not in names)
        if strict and unknown:
            raise ConfigError(f"unknown LaZSL parameter(s): {', '.join(unknown)}; "
                              f"expected some of: {', '.join(names)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> "LaZSLConfig":
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

    def output_diff(self, other: "LaZSLConfig | Mapping[str, Any]") -> list[str]:
        """Names of the output-determining parameters (field metadata
        ``output=True``: everything but ``device`` and ``batch_size``, whose
        values never change a sample's result) that differ from ``other``."""
        o = other if isinstance(other, LaZSLConfig) else LaZSLConfig.from_dict(other, strict=False)
        return [f.name for f in dataclasses.fields(self)
                if f.metadata["output"] and _views(f.name, getattr(self, f.name))
                != _views(f.name, getattr(o, f.name))]

    # --------------------------------------------------------------------- CLI
    @classmethod
    def cli_flag(cls, name: str) -> str:
        """The command-line flag of a parameter (``n_crops`` -> ``--n-crops``)."""
        return "--" + name.replace("_", "-")

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser,
                          exclude: Iterable[str] = ()) -> None:
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
                help_ = m["help"] + " (default: " + ", ".join(
                    f"{_show(v[f.name])} for {k}" for k, v in METHOD_DEFAULTS.items()) + ")"
            else:
                help_ = f"{m['help']} (default: {_show(default)})"
            if f.name == "crop_scale":
                group.add_argument(flag, type=float, nargs=2, metavar=("ALPHA", "BETA"),
                                   default=None, help=help_)
                group.add_argument("--crop-min", type=float, default=None, metavar="ALPHA",
                                   help="smallest crop side / min(H, W) (same as the first "
                                        "--crop-scale value)")
                group.add_argument("--crop-max", type=float, default=None, metavar="BETA",
                                   help="largest crop side / min(H, W)")
                continue
            kind = _field_type(f)
            kw: dict = {"default": None, "help": help_}
            if m["choices"]:
                kw["choices"] = m["choices"]
            if kind in (int, float):
                kw["type"] = kind
            group.add_argument(flag, **kw)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace, **overrides: Any) -> "LaZSLConfig":
        """The config given by parsed flags (see :meth:`add_cli_arguments`);
        flags not given keep the defaults.

        Raises:
            ConfigError: a bad value, naming the flag's parameter.
        """
        d: dict = {}
        for name in cls.field_names():
            v = getattr(args, name, None)
            if v is not None:
                d[name] = v
        d.update({k: v for k, v in overrides.items() if v is not None})
        lo, hi = getattr(args, "crop_min", None), getattr(args, "crop_max", None)
        if lo is not None or hi is not None:
            base = list(d.get("crop_scale", cls.crop_scale_default(d.get("method", "lazsl"))))
            d["crop_scale"] = (lo if lo is not None else base[0], hi if hi is not None else base[1])
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)

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
        raise ConfigError(f"{name} must be a 64-bit integer (at most {INT64_MAX}; runs are "
                          f"recorded in MongoDB), got {v}")
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
