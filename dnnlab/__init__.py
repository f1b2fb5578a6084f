"""dnnlab: the mathematics of deep networks as verified, runnable experiments."""
__version__ = "0.1.0"
