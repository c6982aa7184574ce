"""Data: finding and decoding images, and the image sets training and evaluation read."""

from simclr.data.datasets import ImageFiles, InMemoryImages, labelled_splits, training_images
from simclr.data.images import NoImagesError, find_images, load_image

__all__ = ["ImageFiles", "InMemoryImages", "NoImagesError", "find_images", "labelled_splits", "load_image",
           "training_images"]
