"""Fine-tuning a pre-trained encoder on a few labels (SimCLR's semi-supervised protocol) into a classifier."""
