"""Benchmark scripts: side-by-side measurements that print ratios (not timed tests)."""
