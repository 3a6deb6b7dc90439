"""Labelled reviews: where they come from (sources), how files are read (readers), which rows are
usable (rows), how they are sampled (sampling) and tokenised (tokenize)."""
