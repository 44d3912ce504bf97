"""sparsecode: find the sparse, linear features hidden in neural representations."""

__version__ = "0.1.0"
