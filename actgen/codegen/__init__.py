"""Templates: Derivation IR -> the source of one generated module, and the package index."""
from .module import is_generated, render_module, render_package_init
from .writer import Writer, escape_docstring

__all__ = ["is_generated", "render_module", "render_package_init", "Writer", "escape_docstring"]
