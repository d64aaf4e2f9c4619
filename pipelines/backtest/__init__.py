"""Batch backtesting of cascade-prediction accuracy against baselines (issue 7)."""
