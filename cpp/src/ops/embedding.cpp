// Embedding lookup: out[..., :] = table[ids[...], :] as f32. A row gather; f16/bf16 rows are
// widened with the convert kernels, so this family has no vector variant of its own.
#include <cstring>

#include "ops/convert.h"

#if !LB_SIMD
#include "ops/common.h"

namespace lb::ops {
LB_REGISTER_FAMILY(embedding, false, "row gather");

namespace {

int64_t id_at(const Tensor& ids, int64_t i) {
  return ids.dtype() == DType::i32 ? int64_t(ids.data<int32_t>()[i]) : ids.data<int64_t>()[i];
}

// The multi-index of flat position i in `shape`, for error messages.
std::string position(const Shape& shape, int64_t i) {
  Shape idx(shape.size());
  for (int d = int(shape.size()) - 1; d >= 0; --d) {
    idx[d] = i % shape[d];
    i /= shape[d];
  }
  return shape_str(idx);
}

}  // namespace

Tensor embedding(const Tensor& ids_in, const Tensor& table, Tensor out) {
  constexpr const char* op = "embedding";
  if (!ids_in.defined()) throw TypeError("embedding: ids is missing");
  if (ids_in.dtype() != DType::i32 && ids_in.dtype() != DType::i64)
    throw TypeError(std::string("embedding: ids has dtype ") + name(ids_in.dtype()) + "; expected i32 or i64");
  if (!table.defined() || !traits(table.dtype()).to_float || table.dtype() == DType::f64)
    throw TypeError(std::string("embedding: table has dtype ") + (table.defined() ? name(table.dtype()) : "none") +
                    "; expected f32, f16, bf16 or a ggml block type");
  if (table.ndim() != 2)
    throw ValueError("embedding: table must have 2 dimensions (V, D), got shape " + shape_str(table.shape()));
  if (ids_in.ndim() + 1 > kMaxDims)
    throw ValueError("embedding: ids has shape " + shape_str(ids_in.shape()) + "; at most " +
                     std::to_string(kMaxDims - 1) + " dimensions are supported (the result adds one)");
  const int64_t v = table.dim(0), d = table.dim(1);
  const Tensor ids = ids_in.contiguous();
  const int64_t n = ids.numel();

  // Every id is checked before anything is written.
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = id_at(ids, i);
    if (id < 0 || id >= v)
      throw IndexError("embedding: id " + std::to_string(id) + " at position " + position(ids.shape(), i) +
                       " of ids is out of range for a table of V = " + std::to_string(v) + " rows");
  }

  Shape shape = ids.shape();
  shape.push_back(d);
  out = detail::prepare_out(out, shape, op, {{ids_in, "ids", false}, {table, "table", false}});
  if (n == 0 || d == 0) return out;

  const DType dt = table.dtype();
  const int64_t item = table.itemsize(), row_stride = table.strides()[0], col_stride = table.strides()[1];
  // (For ggml blocks itemsize is 0 and the column stride is per block; rows are always whole.)
  const bool dense_rows = col_stride == item;
  const auto widen = dt == DType::f16 ? LB_DISPATCH(f16_to_f32) : LB_DISPATCH(bf16_to_f32);
  const auto* base = static_cast<const std::byte*>(table.raw());
  float* yp = out.data<float>();
  detail::for_rows(n, d, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const std::byte* src = base + id_at(ids, r) * row_stride;
      float* y = yp + r * d;
      if (is_quantized(dt)) {  // ggml blocks: whole rows, dequantized (the reference path)
        traits(dt).to_float(src, y, d);
      } else if (dense_rows && dt == DType::f32) {
        std::memcpy(y, src, size_t(d) * sizeof(float));
      } else if (dense_rows) {
        widen(reinterpret_cast<const uint16_t*>(src), y, d);
      } else {
        for (int64_t j = 0; j < d; ++j) {
          const std::byte* p = src + j * col_stride;
          if (dt == DType::f32) {
            std::memcpy(&y[j], p, sizeof(float));
          } else {
            uint16_t h;
            std::memcpy(&h, p, sizeof(h));
            y[j] = dt == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace lb::ops
#endif
