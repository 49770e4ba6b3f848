"""The one seed rule for per-epoch randomness: every draw of an epoch derives from ``(seed, epoch, rank)``.

NumPy's ``SeedSequence`` hashes the three numbers together, so distinct triples give unrelated streams: seed ``s``
at epoch ``e + 100`` no longer replays seed ``s + 1`` at epoch ``e`` (seed bags use consecutive seeds), and rank
``r`` of one run never replays another run's epoch. A resumed run recomputes the same seeds, so it replays the
same draws.
"""

from __future__ import annotations

import numpy as np


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for epoch ``epoch`` of process ``rank`` of a run seeded ``seed``.

    32 bits because NumPy's legacy global seed (timm's mixup draws from it) takes no more; torch's generators and
    albumentations take it as it is. Negative seeds are folded into the unsigned range ``SeedSequence`` needs.
    """
    entropy = [int(value) % 2**64 for value in (seed, epoch, rank)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])
