"""Provides the sections of `scripts/gpu_check.py`: one module per section, plus the records and the report.

Each section module has `run(ctx, section)`; the check driver runs every section in its own process.
"""
