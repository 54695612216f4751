"""ggml block formats (the quantized types of GGUF files), under ggml's names.

A quantized :class:`lmblocks.Tensor` of shape (..., K) stores each row as K / block_size blocks
(``lb.dtype_info(name)`` gives block_size and bytes per block); in NumPy it appears as the raw
bytes, uint8 of shape (..., K / block_size * bytes). Types: q4_0, q4_1, q5_0, q5_1, q8_0, q8_1
(32-element blocks) and the k-quants q2_k, q3_k, q4_k, q5_k, q6_k, q8_k (256-element super-blocks).
:func:`quantize` makes them from floats (all but the activation format q8_k) and :func:`dequantize`
reads them back.
"""

from __future__ import annotations

from . import _core

_quant = _core.quant

__all__ = ["dequantize", "quantize"]


def dequantize(t):
    """The float32 values of a tensor: ggml's reference dequantization, bit for bit.

    t: an :class:`lmblocks.Tensor` (..., K) of a ggml block type, or of f32/f16/bf16/f64
    -> a new contiguous float32 NumPy array (..., K). Leading axes may be strided views (e.g. a slice
    of rows); the work is split over rows on the lmblocks thread pool, without the GIL.
    Raises ``TypeError`` for anything but a Tensor, and for types without a float conversion (integers).

    A q8_0 block is an f16 scale d followed by 32 int8 quants q; its values are ``d * q``:

    >>> import numpy as np, lmblocks as lb
    >>> from lmblocks.quant import dequantize
    >>> t = lb.empty(1, 32, dtype="q8_0")
    >>> raw = np.asarray(t)                  # (1, 34) uint8: the block's bytes
    >>> raw[0, :2] = np.array([0.5], np.float16).view(np.uint8)
    >>> raw[0, 2:] = np.arange(-16, 16, dtype=np.int8).view(np.uint8)
    >>> dequantize(t)[0, :4]
    array([-8. , -7.5, -7. , -6.5], dtype=float32)
    """
    return _quant.dequantize(t)


def quantize(x, dtype):
    """Float rows to a ggml block type, with ggml's reference quantizers (``quantize_row_*_ref``).

    x: (..., K) floats: an :class:`lmblocks.Tensor` of f32/f16/bf16/f64, or anything
    ``np.asarray(x, dtype=np.float32)`` accepts; K must be a multiple of the type's block size
    (32, or 256 for the k-quants). dtype: "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "q2_k",
    "q3_k", "q4_k", "q5_k" or "q6_k" -> a new Tensor of that dtype and of shape (..., K).
    The bytes equal ggml's (llama.cpp's ``quantize_row_*_ref``) bit for bit: same float32 operations in
    the same order, f16 scales rounded to nearest even. Rows are split over the lmblocks thread pool,
    without the GIL. Raises ``ValueError`` for an unknown or non-quantizable dtype (listing the supported
    ones), a K that is not a multiple of the block size, or a NaN/inf element (naming its index).

    q8_0 stores each block of 32 as an f16 scale d = max|x| / 127 and 32 int8 ``round(x / d)``:

    >>> import numpy as np, lmblocks as lb
    >>> from lmblocks.quant import quantize, dequantize
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> t = quantize(x, "q8_0")
    >>> t.dtype, t.shape, np.asarray(t).shape    # two rows of one 34-byte block each
    ('q8_0', (2, 32), (2, 34))
    >>> bool(np.abs(dequantize(t) - x).max() <= 0.5 / 127)
    True
    """
    return _quant.quantize(x, dtype)
