"""The bottom layer: what every stage may use and that uses no stage.

``errors`` (the error base class), ``io`` (atomic writes, safe names, JSON), ``hashing`` (the one JSON hash),
``seeds`` (per-epoch random seeds), ``splits`` (the held-out rows of a fold assignment), ``report`` (tables,
progress bars, logging) and ``executors`` (where a grid of jobs runs). Nothing here imports another package of
``pipeline``.
"""
