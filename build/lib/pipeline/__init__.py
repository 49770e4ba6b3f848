"""kfold-ensembler: k-fold training of timm models and honest ensembling for Kaggle image competitions."""

import os

# albumentations checks PyPI for a newer release on import; Kaggle code competitions are offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
