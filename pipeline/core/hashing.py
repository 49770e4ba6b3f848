"""The one JSON hash: a short stable digest of JSON-able data (configs, fold assignments, cache keys)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def json_hash(data: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``data`` as sorted-key JSON (non-JSON values as ``str``)."""
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
