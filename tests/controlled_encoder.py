"""A deterministic stand-in for an open_clip model whose answers are known.

:class:`ControlledModel` is a :class:`fiftyone_lazsl.core.models.LoadedModel`, so
``LaZSLClassifier(aset, model=ControlledModel(...))`` runs the production
pipeline (decoding, crops, vision selection, optimal transport, writing to
FiftyOne) on features chosen by the test:

* every prompt the classifier builds for attribute ``a`` of class ``c`` is
  encoded as the basis vector ``e[c, a]`` (texts are looked up, an unknown text
  is an error);
* images are solid-colour PNGs; the colour of a view (global view or crop)
  names its true class ``c`` through :data:`PALETTE`, and the view is encoded as
  ``normalize(sum_a W[c, a] e[c, a] + LAMBDA * sum_{c' != c, a} V[c', a] e[c', a])``.

So every method predicts the true class, and within a class the evidence order
is fixed by the weights: the image's own class has its strongest attribute at
:func:`strongest_attribute`; any other class has its weakest attribute at
:func:`weakest_attribute`. All crops of a solid image equal the global view, so
LaZSL's transport plan is uniform and each attribute's contribution is
``cos / A``, in the same order as the cosines.

For ``clip`` runs the prompt ``"a photo of a {c}."`` is encoded as the direction
of class ``clip_map[c]``'s images (identity by default; a permutation makes CLIP
systematically confuse classes, to test side-by-side comparisons).
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
import torch

from fiftyone_lazsl.core.attributes import AttributeSet
from fiftyone_lazsl.core.models import LoadedModel
from fiftyone_lazsl.core.prompts import build_prompts, clip_prompt

#: Colour of each class's images, by class index.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
]
LAMBDA = 0.3
LOGIT_SCALE = 10.0


def make_attribute_set(num_classes: int = 6, num_attributes: int = 4) -> AttributeSet:
    """Classes ``class_0..`` with distinct attribute texts ``"<colour word> mark k of class c"``."""
    words = ["red", "green", "yellow", "blue", "orange", "purple", "cyan", "pink"]
    return AttributeSet.from_dict(
        {
            f"class_{c}": [
                f"{words[(c + k) % len(words)]} mark {k} of class {c}"
                for k in range(num_attributes)
            ]
            for c in range(num_classes)
        },
        name="controlled",
    )


def own_weight(c: int, a: int, A: int) -> float:
    """``W[c, a]``: weight of the image's own class attribute (1..1.5)."""
    r = (a + c) % A
    return 1.0 + 0.5 * (A - 1 - r) / max(1, A - 1)


def other_weight(c: int, a: int, A: int) -> float:
    """``V[c, a]``: weight of another class's attribute in an image (> 0; distinct
    within a class, and different sums for different classes, so no class scores tie)."""
    r = (a + 2 * c + 1) % A
    return (1.0 - r / A) * (1.0 + 0.05 * c)


def strongest_attribute(c: int, A: int) -> int:
    """Index of class ``c``'s attribute with most evidence in an image of class ``c``."""
    return max(range(A), key=lambda a: own_weight(c, a, A))


def weakest_attribute(c: int, A: int) -> int:
    """Index of class ``c``'s attribute with least evidence in an image of another class."""
    return min(range(A), key=lambda a: other_weight(c, a, A))


class ControlledModel(LoadedModel):
    """A :class:`LoadedModel` with hand-made features (see the module docstring)."""

    def __init__(
        self,
        attribute_set: AttributeSet,
        *,
        clip_map: dict | None = None,
        prompt_style: str = "dclip",
    ):
        module = torch.nn.Module()
        module.logit_scale = torch.nn.Parameter(torch.tensor(math.log(LOGIT_SCALE)))
        super().__init__(
            model=module,
            tokenizer=None,
            name="controlled-test",
            pretrained=None,
            weights_id=None,
            random_weights=False,
            image_size=16,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            interpolation="bilinear",
            resize_mode="shortest",
            device=torch.device("cpu"),
        )
        self.classes = list(attribute_set.classes)
        prompts, _ = build_prompts(attribute_set, style=prompt_style)
        self.A = [len(p) for p in prompts]
        offsets = np.cumsum([0] + self.A)
        self.dim = int(offsets[-1])
        self.text_index = {}
        for c, ps in enumerate(prompts):
            for a, p in enumerate(ps):
                self.text_index[p] = int(offsets[c] + a)
        self.offsets = offsets
        C = len(self.classes)
        self.image_vectors = torch.zeros(C, self.dim)
        for c in range(C):
            v = torch.zeros(self.dim)
            for c2 in range(C):
                for a in range(self.A[c2]):
                    w = (
                        own_weight(c, a, self.A[c])
                        if c2 == c
                        else LAMBDA * other_weight(c2, a, self.A[c2])
                    )
                    v[offsets[c2] + a] = w
            self.image_vectors[c] = v / v.norm()
        clip_map = clip_map or {}
        self.clip_vectors = {
            clip_prompt(name): self._own_direction(clip_map.get(c, c))
            for c, name in enumerate(self.classes)
        }

    def _own_direction(self, c: int) -> torch.Tensor:
        v = torch.zeros(self.dim)
        for a in range(self.A[c]):
            v[self.offsets[c] + a] = own_weight(c, a, self.A[c])
        return v / v.norm()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Each view's mean colour -> nearest palette colour -> that class's vector."""
        rgb = pixels.float().mean(dim=(2, 3)) * 255.0  # [V, 3]
        pal = torch.tensor(PALETTE[: len(self.classes)], dtype=torch.float32)
        d = torch.cdist(rgb, pal)
        dist, idx = d.min(dim=1)
        if bool((dist > 3.0).any()):
            raise ValueError(f"view colour not in the palette: {rgb[dist.argmax()].tolist()}")
        return self.image_vectors[idx].clone()

    @torch.no_grad()
    def encode_texts(self, texts, **kwargs) -> torch.Tensor:
        """Attribute prompts -> basis vectors; CLIP prompts -> a class's direction."""
        out = torch.zeros(len(texts), self.dim)
        for i, t in enumerate(texts):
            if t in self.clip_vectors:
                out[i] = self.clip_vectors[t]
            else:
                out[i, self.text_index[t]] = 1.0
        return out


def write_images(root, counts: dict[int, int], size=(40, 32)) -> list[tuple[str, int]]:
    """Solid PNGs ``root/class_<c>/<i>.png`` in class ``c``'s colour;
    returns ``[(path, true_class)]`` in a stable order."""
    from PIL import Image

    out = []
    for c, n in counts.items():
        d = pathlib.Path(root) / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = d / f"{i}.png"
            Image.new("RGB", (size[0] + 4 * i, size[1] + 2 * c), PALETTE[c]).save(p)
            out.append((str(p), c))
    return out
