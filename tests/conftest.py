"""Shared test set-up: make tests/support importable as `support`; Hypothesis's profiles."""

import os
import sys
from pathlib import Path

from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

# The property tests run the same examples every time (a red CI must be reproducible, never luck);
# `HYPOTHESIS_PROFILE=explore python -m pytest …` draws new ones to hunt for more.
settings.register_profile("default", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
