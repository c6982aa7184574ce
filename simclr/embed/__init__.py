"""Embedding: the Encoder protocol and its implementations, the folder -> feats.npy pipeline, the feats format."""
