"""NumPy float64 references, written from the papers and the PyTorch / Hugging Face docs.

They never import lmblocks: they are the spec the native kernels are tested against.
"""
