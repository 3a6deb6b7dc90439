"""Helpers every stage may use: atomic writes, progress bars, provenance, hashing."""
