"""vidhash: long video generation with hash attention."""
__version__ = "0.1.0"
