"""Fuzz settings: a bounded slice in the normal run, any number of examples on demand.

``FUZZ_EXAMPLES`` sets the examples per target (``scripts/fuzz`` runs 100,000 of
each); without it every target runs :data:`CI_EXAMPLES`, derandomized, so a CI run
replays the same inputs every time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI_EXAMPLES = 300
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", CI_EXAMPLES))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES == CI_EXAMPLES,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
