"""The version of masked_opt (one place: the package, the server guard and the docs read it)."""
__version__ = '0.1.0'
