"""simclr: SimCLR (Chen et al. 2020) as a tool.

Train an image encoder without labels, export it without its projection head, serve it, embed and search images.
"""

__version__ = "0.1.0"
