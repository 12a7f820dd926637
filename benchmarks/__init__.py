"""Benchmarks: timing and quality measurements of the editing methods."""
