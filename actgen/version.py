"""Versions: the package's, and the code generator's (part of every cache key)."""
__version__ = "0.1.0"
COMPILER_VERSION = "19"
