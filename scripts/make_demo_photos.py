"""Regenerate the demo photos packaged in ``fiftyone_lazsl/data/demo/``.

Development-time only: reads the Oxford-IIIT Pet photos and the published
``pets`` attribute set from ``../shared/data`` (a development folder next to the
checkout; users never need it) and writes, for the breeds in ``BREEDS``:

- ``fiftyone_lazsl/data/demo/pets/<breed>/<file>.jpg``: each photo with its EXIF
  orientation applied, converted to RGB, downscaled so its longest side is at
  most ``MAX_SIDE`` pixels (Lanczos), saved as JPEG quality ``QUALITY``;
- ``fiftyone_lazsl/data/demo/ATTRIBUTION.md``: per photo the dataset, original
  file name, licence and the change made;
- ``fiftyone_lazsl/data/demo/pets.json``: the published ``pets`` attribute set,
  byte for byte.

Usage: ``python scripts/make_demo_photos.py`` from the repository root.
"""

from __future__ import annotations

import csv
import hashlib
import pathlib
import shutil

from PIL import Image, ImageOps

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
OUT = REPO / "fiftyone_lazsl" / "data" / "demo"
MAX_SIDE = 384
QUALITY = 85
# 6 cat and 6 dog breeds, 2 photos each (24 photos): see docs/cli.md, "demo", for
# how the count was chosen (the demo's time budget on a 2-core CPU).
BREEDS = [
    "Abyssinian",
    "Bengal",
    "Birman",
    "Bombay",
    "Persian",
    "Siamese",
    "beagle",
    "boxer",
    "chihuahua",
    "pomeranian",
    "pug",
    "samoyed",
]
PER_BREED = 2


def main() -> None:
    rows = [r for r in csv.DictReader(open(SHARED / "manifest.csv")) if r["set"] == "pets"]
    if (OUT / "pets").exists():
        shutil.rmtree(OUT / "pets")
    lines = []
    for breed in BREEDS:
        chosen = sorted((r for r in rows if r["label"] == breed), key=lambda r: r["path"])[
            :PER_BREED
        ]
        assert len(chosen) == PER_BREED, breed
        for r in chosen:
            src = SHARED / r["path"]
            assert hashlib.sha1(src.read_bytes()).hexdigest() == r["sha1"], src
            dst = OUT / "pets" / breed / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(src) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                w, h = im.size
                im.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
                im.save(dst, "JPEG", quality=QUALITY, optimize=True)
                size = im.size
            lines.append(
                f"| `pets/{breed}/{src.name}` | {breed} | `{src.name}` "
                f"| {w}x{h} -> {size[0]}x{size[1]} |"
            )
    shutil.copyfile(SHARED / "attribute_sets" / "pets.json", OUT / "pets.json")
    (OUT / "ATTRIBUTION.md").write_text(
        HEADER.format(n=len(lines), side=MAX_SIDE, q=QUALITY) + "\n".join(lines) + "\n" + FOOTER
    )


HEADER = """# Demo data: sources and licences

## Photos (`pets/<breed>/<file>.jpg`, {n} files)

All photos are from the **Oxford-IIIT Pet Dataset** (O. M. Parkhi, A. Vedaldi,
A. Zisserman, C. V. Jawahar, "Cats and Dogs", CVPR 2012,
<https://www.robots.ox.ac.uk/~vgg/data/pets/>), which is distributed under the
**Creative Commons Attribution-ShareAlike 4.0 International** licence
(CC BY-SA 4.0, <https://creativecommons.org/licenses/by-sa/4.0/>). The copyright
of each image remains with its owner.

Changes made: EXIF orientation applied, converted to RGB, downscaled so that the
longest side is at most {side} pixels, re-encoded as JPEG (quality {q}). These
downscaled photos are shared under the same licence, CC BY-SA 4.0. The file names
are the original dataset file names; the folder is the breed (the dataset's class).
`scripts/make_demo_photos.py` regenerates them.

| file | breed | original file name | size (original -> here, pixels) |
|---|---|---|---|
"""

FOOTER = """
## Attribute set (`pets.json`)

The published `pets` attribute set (37 Oxford-IIIT Pet breeds, LLM-generated
attribute descriptions), byte for byte the file `descriptors/descriptors_pets.json`
of the LaZSL repository (<https://github.com/shiming-chen/LaZSL>, commit
34b79f739c1e13a74ce404e3a62f47c7fffa7e12), licensed under the **Apache License 2.0**
(<https://www.apache.org/licenses/LICENSE-2.0>). Its SHA-256 equals the one
recorded for `pets` in `fiftyone_lazsl/data/published_attribute_sets.json`.
Citation: Shiming Chen et al., "Interpretable Zero-Shot Learning with
Locally-Aligned Vision-Language Model", ICCV 2025.
"""

if __name__ == "__main__":
    main()
