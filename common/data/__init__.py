"""Interaction data and the users it makes, in loading order; each module uses only the ones above it.

1. `files`: find a named dataset locally, or download the official MovieLens archive (verified).
2. `interactions`: read an interactions file (CSV/TSV/Parquet/MovieLens) into one validated table;
   `synthetic` makes such a table for tests and demos.
3. `sequences`: filter, re-index and split the table per user (leave-one-out) into `SequenceData`,
   and cut the model's training windows.
4. `load`: the one entry point from data settings to `SequenceData`, with an on-disk cache.
5. `partition`: split users over federated clients (one user per client, or silos), after taking
   out holdout users; `canaries` (audit users) and `fake_users` (a simulated promotion attack) add
   users that are not in the data.
"""
