"""Printers: IR expressions -> source text.  One class per target, mostly tables."""
from .base import ExprPrinter, PrinterError
from .torch import TorchPrinter
from .triton import TritonPrinter

__all__ = ["ExprPrinter", "PrinterError", "TorchPrinter", "TritonPrinter"]
