"""Benchmarks of the pipeline, outside the product: ``speed`` (``make bench``), ``recipes`` (``make bench-recipes``),
``blend`` (``make bench-ensemble``) and ``real`` (``make bench-ensemble-real``). Nothing in ``pipeline`` imports
them, and the exported wheel holds only ``pipeline``."""
