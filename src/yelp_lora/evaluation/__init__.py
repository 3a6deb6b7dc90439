"""Scoring adapters on held-out reviews: evaluate, compare, the classical baseline, reports, seed sweeps."""
