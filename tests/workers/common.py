"""Helpers for worker scripts launched by the horovodrun fixture."""

import json
import os
from pathlib import Path


def report(rank, **results):
    """Write this rank's results where the test reads them."""
    out = Path(os.environ["HVDSPAR_TEST_OUT"]) / f"rank{rank}.json"
    out.write_text(json.dumps(results))
