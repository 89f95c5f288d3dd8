"""reembed: distributed, resumable re-embedding of Qdrant collections.

`engine` is plain Python and importable without Ray; `actors` adapts engine objects to Ray.
"""

__version__ = "0.1.0"
