"""YAML presets (model sizes, generation); loaded by vidhash.config through importlib.resources."""
