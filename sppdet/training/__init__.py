"""Training loops and choices: pretraining, fine-tuning, the splits, settings and selection on val."""
