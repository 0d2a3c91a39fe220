"""fleetrl benchmarks: `python -m bench NAME [--quick]` or `python -m bench all`. See docs/benchmarks.md."""
