"""Kept for `from dnnlab.toeplitz import toeplitz`; the code is in dnnlab/conv/toeplitz.py."""
from dnnlab.conv.toeplitz import toeplitz

__all__ = ["toeplitz"]
