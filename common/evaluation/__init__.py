"""Evaluation: full-catalogue ranking (`ranking`), top-K accuracy and beyond-accuracy metrics
(`metrics`, over the item statistics of `item_stats`), optional re-ranking (`reranking`) and
user-group gaps (`user_groups`)."""
