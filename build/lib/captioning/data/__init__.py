"""Data: a Flickr8k-layout dataset read and checked (dataset.py), images decoded safely (images.py), captions cleaned
and their vocabulary (text.py), and the embedded synthetic dataset that needs no download (synthetic.py)."""
