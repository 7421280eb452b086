"""Benchmarks: ``python -m benchmarks`` (or ``scripts/bench``) prints each as a ratio
measured side by side in one run. See the README's Performance section."""
