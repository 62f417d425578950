"""BatOS: a persistent, self-extending prototype object system."""

__version__ = "0.1.0"
