"""Data: finding and decoding images (images), and the image sets training and evaluation read (datasets)."""
