"""Companion code for Choenni, Garrette & Shutova (EMNLP 2023).

Every computation of the book lives in this package; the notebooks only call it and show results.
"""

__version__ = "0.1.0"
