"""A staged transfer-learning and data-augmentation pipeline (see README.md)."""

import os

# albumentations looks for a newer version over the network on import unless this is set;
# every module of the package (and the benchmarks and tests, which import it first) sees it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
