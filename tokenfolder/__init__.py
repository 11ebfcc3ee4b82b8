"""The token folder: what `narrator tokenize` writes and the loader reads, defined once.

manifest.py (what a folder holds), shards.py (the webdataset tars), split.py (which frames are
validation), storage.py (local paths and object-store URLs alike). Both tokenizers/ and streaming/
import this package; it imports neither.
"""
