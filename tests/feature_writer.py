"""Helper process for tests/test_features.py: writes deterministic entries
into a feature store (``python feature_writer.py STORE PREFIX COUNT [KEYS_PER_PUT]``;
COUNT 0 = forever), printing each committed batch's last index."""

import sys
import zlib

import numpy as np

from fiftyone_lazsl.core.features import FeatureEntry, FeatureStore

SPEC = {"model": "test", "weights_id": "w", "n_crops": 7}


def entry(key: str, n_views: int = 8, dim: int = 512) -> FeatureEntry:
    """The entry a key always gets (values derived from the key)."""

    rng = np.random.default_rng(zlib.crc32(key.encode()))
    f = rng.standard_normal((n_views, dim)).astype(np.float32)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    b = rng.integers(0, 100, size=(n_views - 1, 4))
    return FeatureEntry(key=key, features=f, boxes=b, image_size=(100, 80), original_size=(100, 80))


def main() -> None:
    path, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    per = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    store = FeatureStore(path, dtype="float32", check="none")
    fp = store.register(SPEC)
    i = 0
    while count == 0 or i < count:
        store.put_many(fp, [entry(f"{prefix}{j}") for j in range(i, i + per)])
        i += per
        print(i, flush=True)
    store.close()


if __name__ == "__main__":
    main()
