"""Interaction data, in loading order; each module uses only the ones above it.

1. `files`: find a named dataset locally, or download the official MovieLens archive (verified).
2. `interactions`: read an interactions file (CSV/TSV/Parquet/MovieLens) into one validated table;
   `synthetic` makes such a table for tests and demos.
3. `sequences`: filter, re-index and split the table per user (leave-one-out) into `SequenceData`,
   and cut the model's training windows.
4. `load`: the one entry point from data settings to `SequenceData`, with an on-disk cache.
"""
