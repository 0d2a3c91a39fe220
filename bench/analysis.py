"""The hand-written closing note of docs/benchmarks.md: where the time goes, what would close each gap."""

ANALYSIS = """
## Where the time goes

(to be filled in after profiling)
"""
