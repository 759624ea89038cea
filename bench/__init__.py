"""Benchmarks at millions of rows: each job against its single-statement bound (`python -m bench`)."""
