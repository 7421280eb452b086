"""The Datastore emulator for the unit tests of transactional tasks (test_guard*.py).

The integration tests' session-scoped fixtures (one real emulator, started once, about
two seconds; emptied before each test), defined here once so that every unit module
using them shares the one emulator: a module re-exporting them itself would start its
own. Without the emulator those tests skip, and fail under ``CI=true``.
"""

from __future__ import annotations

from tests.integration import conftest as integration

emulator_logs = integration.emulator_logs
datastore_emulator = integration.datastore_emulator
datastore = integration.datastore
