"""The command line the Makefile calls: ``python -m pipeline <command> ...`` (see ``main``: one function per sub-
command in ``stages`` and ``training``).
"""

from pipeline.cli.main import main

__all__ = ["main"]
