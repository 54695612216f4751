// lb::dequantize: any tensor whose type has a to_float, row by row over the pool.
#include <algorithm>
#include <string>

#include "lmblocks/error.h"
#include "lmblocks/quant.h"
#include "lmblocks/runtime.h"

namespace lb {

Tensor dequantize(const Tensor& t) {
  if (!t.defined()) throw ValueError("dequantize: the tensor is undefined");
  const DTypeTraits& tr = traits(t.dtype());
  if (!tr.to_float) throw TypeError(std::string("dequantize: no conversion from ") + tr.name + " to f32");
  // Plain types may be strided along the last axis too (a transposed f16 matrix): read a contiguous copy.
  // Quantized tensors are contiguous within a row by construction.
  if (!tr.quantized && t.ndim() > 0 && t.dim(-1) > 1 && t.strides().back() != tr.type_size)
    return dequantize(t.contiguous());

  Tensor out = Tensor::empty(t.shape(), DType::f32);  // (..., K)
  const int64_t n = t.numel();
  if (n == 0) return out;
  const int nd = t.ndim();
  const int64_t K = nd > 0 ? t.dim(-1) : 1, rows = n / K;
  const Shape& shape = t.shape();
  const Shape& strides = t.strides();
  const std::byte* base = t.data<const std::byte>();
  float* y = out.data<float>();
  const auto to_float = tr.to_float;

  parallel_for(rows, std::max<int64_t>(1, 16384 / K), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t off = 0;  // byte offset of row r through the leading (possibly strided) axes
      for (int64_t i = nd - 2, rem = r; i >= 0 && rem; --i) {
        off += rem % shape[i] * strides[i];
        rem /= shape[i];
      }
      to_float(base + off, y + r * K, K);
    }
  });
  return out;
}

}  // namespace lb
