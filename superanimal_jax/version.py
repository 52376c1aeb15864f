"""The package version, in one place (the model directories record it)."""

__version__ = '0.1.0'
