"""Load generator, seeders and benchmark scenarios (scripts run from the repository root; see BENCHMARKS.md)."""
