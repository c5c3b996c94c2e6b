"""Quality options: item features, augmentation, ensembles, beyond-accuracy metrics and re-ranking."""
