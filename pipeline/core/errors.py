"""The one base class of the pipeline's own errors.

Every error the pipeline raises on purpose (a bad config, bad data, a damaged run, a
diverged training) derives from :class:`PipelineError`, so the command line has one
place that turns them into ``error: ...`` and exit code 2, and it can do so without
importing the modules (torch, timm) that raise some of them.
"""

from __future__ import annotations


class PipelineError(Exception):
    """An expected failure whose message names the problem and the fix."""
