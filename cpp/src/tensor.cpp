#include "lmblocks/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <sstream>

#include "lmblocks/error.h"
#include "lmblocks/ops.h"
#include "lmblocks/runtime.h"

namespace lb {

std::string shape_str(const Shape& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

int normalize_axis(int axis, int ndim, const char* what) {
  if (axis < -ndim || axis >= ndim)
    throw IndexError(std::string(what) + ": axis " + std::to_string(axis) + " is out of range for " +
                     std::to_string(ndim) + " dimensions");
  return axis < 0 ? axis + ndim : axis;
}

int64_t checked_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ValueError("negative dimension in shape " + shape_str(shape));
    if (__builtin_mul_overflow(n, d, &n)) throw ValueError("shape " + shape_str(shape) + " is too large");
  }
  return n;
}

Tensor::Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape, Shape strides, bool readonly)
    : owner_(std::move(owner)), data_(static_cast<std::byte*>(data)), dtype_(dtype), shape_(std::move(shape)),
      strides_(std::move(strides)), readonly_(readonly) {
  if (shape_.size() != strides_.size()) throw ValueError("Tensor: shape and strides differ in length");
  if (shape_.size() > size_t(kMaxDims)) throw ValueError("Tensor: more than 8 dimensions");
  checked_numel(shape_);
  if (is_quantized(dtype_)) {
    const int64_t bs = traits(dtype_).block_size;
    if (shape_.empty() || shape_.back() % bs != 0)
      throw ValueError(std::string("Tensor: the last dimension of a ") + name(dtype_) + " tensor must be a multiple of " +
                       std::to_string(bs) + ", got shape " + shape_str(shape_));
  }
}

Shape Tensor::contiguous_strides(const Shape& shape, DType dtype) {
  Shape st(shape.size());
  if (shape.empty()) return st;
  const auto& t = traits(dtype);
  int64_t acc = t.type_size;
  st.back() = acc;
  acc = row_bytes(dtype, shape.back());
  for (int i = int(shape.size()) - 2; i >= 0; --i) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  const int64_t n = checked_numel(shape);
  if (!shape.empty() && shape.back() % traits(dtype).block_size != 0)
    throw ValueError(std::string("empty: the last dimension of a ") + name(dtype) + " tensor must be a multiple of " +
                     std::to_string(traits(dtype).block_size) + ", got shape " + shape_str(shape));
  int64_t bytes;
  if (__builtin_mul_overflow(n / traits(dtype).block_size, traits(dtype).type_size, &bytes) ||
      bytes > (int64_t(1) << 46))
    throw ValueError("empty: shape " + shape_str(shape) + " is too large to allocate");
  const size_t alloc = size_t((bytes + kAlignment - 1) / kAlignment * kAlignment) + size_t(kAlignment);
  void* p = buffer_alloc(alloc);
  std::shared_ptr<void> owner(p, [alloc](void* q) { buffer_free(q, alloc); });
  return Tensor(std::move(owner), p, dtype, shape, contiguous_strides(shape, dtype));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  std::memset(t.raw(), 0, size_t(t.nbytes()));
  return t;
}

int64_t Tensor::dim(int i) const { return shape_[normalize_axis(i, ndim(), "dim")]; }
int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}
int64_t Tensor::nbytes() const { return row_bytes(dtype_, numel()); }
int64_t Tensor::itemsize() const { return is_quantized(dtype_) ? 0 : traits(dtype_).type_size; }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;
  const Shape want = contiguous_strides(shape_, dtype_);
  for (int i = 0; i < ndim(); ++i)
    if (shape_[i] != 1 && strides_[i] != want[i]) return false;
  return true;
}

std::pair<const std::byte*, const std::byte*> Tensor::byte_span() const {
  if (numel() == 0) return {data_, data_};
  int64_t lo = 0, hi = 0;
  const int last = ndim() - 1;
  for (int i = 0; i < ndim(); ++i) {
    const int64_t n = (is_quantized(dtype_) && i == last) ? shape_[i] / traits(dtype_).block_size : shape_[i];
    const int64_t ext = (n - 1) * strides_[i];
    (ext < 0 ? lo : hi) += ext;
  }
  const int64_t elem = is_quantized(dtype_) ? traits(dtype_).type_size : traits(dtype_).type_size;
  return {data_ + lo, data_ + hi + elem};
}

static void check_not_quantized_last(const Tensor& t, int axis, const char* what) {
  if (is_quantized(t.dtype()) && axis == t.ndim() - 1)
    throw ValueError(std::string(what) + ": the last (blocked) dimension of a " + name(t.dtype()) +
                     " tensor cannot be viewed element by element");
}

Tensor Tensor::slice(int axis, int64_t start, int64_t stop, int64_t step) const {
  axis = normalize_axis(axis, ndim(), "slice");
  check_not_quantized_last(*this, axis, "slice");
  if (step == 0) throw ValueError("slice: step cannot be zero");
  const int64_t n = shape_[axis];
  // Python slice semantics with clamping.
  auto clamp = [&](int64_t v, int64_t lo, int64_t hi) { return std::min(std::max(v, lo), hi); };
  if (step > 0) {
    start = start < 0 ? clamp(start + n, 0, n) : clamp(start, 0, n);
    stop = stop < 0 ? clamp(stop + n, 0, n) : clamp(stop, 0, n);
  } else {
    start = start < 0 ? clamp(start + n, -1, n - 1) : clamp(start, -1, n - 1);
    stop = stop < 0 ? clamp(stop + n, -1, n - 1) : clamp(stop, -1, n - 1);
  }
  int64_t len = 0;
  if (step > 0 && stop > start) len = (stop - start + step - 1) / step;
  if (step < 0 && start > stop) len = (start - stop - step - 1) / (-step);
  Tensor r = *this;
  if (len > 0) r.data_ = data_ + start * strides_[axis];
  r.shape_[axis] = len;
  r.strides_[axis] = strides_[axis] * step;
  return r;
}

Tensor Tensor::select(int axis, int64_t index) const {
  axis = normalize_axis(axis, ndim(), "select");
  check_not_quantized_last(*this, axis, "select");
  const int64_t n = shape_[axis];
  if (index < -n || index >= n)
    throw IndexError("index " + std::to_string(index) + " is out of bounds for axis " + std::to_string(axis) +
                     " with size " + std::to_string(n));
  if (index < 0) index += n;
  Tensor r = *this;
  r.data_ = data_ + index * strides_[axis];
  r.shape_.erase(r.shape_.begin() + axis);
  r.strides_.erase(r.strides_.begin() + axis);
  return r;
}

Tensor Tensor::unsqueeze(int axis) const {
  axis = normalize_axis(axis, ndim() + 1, "unsqueeze");
  if (ndim() + 1 > kMaxDims) throw ValueError("unsqueeze: more than 8 dimensions");
  if (is_quantized(dtype_) && axis == ndim()) throw ValueError("unsqueeze: cannot add a dimension after the blocked one");
  Tensor r = *this;
  const int64_t st = axis < ndim() ? strides_[axis] * shape_[axis] : traits(dtype_).type_size;
  r.shape_.insert(r.shape_.begin() + axis, 1);
  r.strides_.insert(r.strides_.begin() + axis, st);
  return r;
}

Tensor Tensor::transpose(int a, int b) const {
  a = normalize_axis(a, ndim(), "transpose");
  b = normalize_axis(b, ndim(), "transpose");
  if (a == b) return *this;
  check_not_quantized_last(*this, std::max(a, b), "transpose");
  Tensor r = *this;
  std::swap(r.shape_[a], r.shape_[b]);
  std::swap(r.strides_[a], r.strides_[b]);
  return r;
}

Tensor Tensor::permute(const std::vector<int>& axes) const {
  if (int(axes.size()) != ndim())
    throw ValueError("permute: expected " + std::to_string(ndim()) + " axes, got " + std::to_string(axes.size()));
  std::vector<bool> seen(ndim(), false);
  Tensor r = *this;
  for (int i = 0; i < ndim(); ++i) {
    const int a = normalize_axis(axes[i], ndim(), "permute");
    if (seen[a]) throw ValueError("permute: repeated axis " + std::to_string(axes[i]));
    seen[a] = true;
    r.shape_[i] = shape_[a];
    r.strides_[i] = strides_[a];
  }
  if (is_quantized(dtype_) && normalize_axis(axes.back(), ndim(), "permute") != ndim() - 1)
    throw ValueError("permute: the blocked last dimension of a quantized tensor must stay last");
  return r;
}

// Strides for `shape` over the same memory, if the existing strides can express it (NumPy's rule:
// merge runs of dims that are laid out contiguously, then split them).
static bool view_strides(const Tensor& t, const Shape& shape, Shape& out) {
  const Shape& old = t.shape();
  const Shape& os = t.strides();
  out.assign(shape.size(), 0);
  if (t.numel() == 0) {
    out = Tensor::contiguous_strides(shape, t.dtype());
    return true;
  }
  // Collapse the old shape into chunks of contiguous dims (ignoring size-1 dims).
  std::pair<int64_t, int64_t> chunks[kMaxDims];  // (size, innermost stride)
  size_t n_chunks = 0;
  for (int i = 0; i < int(old.size()); ++i) {
    if (old[i] == 1) continue;
    if (n_chunks > 0 && chunks[n_chunks - 1].second == os[i] * old[i]) {
      chunks[n_chunks - 1].first *= old[i];
      chunks[n_chunks - 1].second = os[i];
    } else {
      chunks[n_chunks++] = {old[i], os[i]};
    }
  }
  size_t c = 0;
  int64_t remaining = n_chunks == 0 ? 1 : chunks[0].first;
  for (int i = 0; i < int(shape.size()); ++i) {
    const int64_t d = shape[i];
    if (d == 1) {
      out[i] = 0;
      continue;
    }
    if (c >= n_chunks || remaining % d != 0) return false;
    remaining /= d;
    out[i] = chunks[c].second * remaining;
    if (remaining == 1 && ++c < n_chunks) remaining = chunks[c].first;
  }
  // Size-1 dims get the stride they would have if contiguous after the next dim (harmless).
  for (int i = int(shape.size()) - 1; i >= 0; --i)
    if (shape[i] == 1) out[i] = (i + 1 < int(shape.size())) ? out[i + 1] * shape[i + 1] : traits(t.dtype()).type_size;
  return true;
}

static Shape resolve_shape(const Tensor& t, Shape shape, const char* what) {
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < int(shape.size()); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw ValueError(std::string(what) + ": only one dimension can be -1");
      infer = i;
    } else if (shape[i] < 0) {
      throw ValueError(std::string(what) + ": negative dimension in " + shape_str(shape));
    } else if (__builtin_mul_overflow(known, shape[i], &known)) {
      throw ValueError(std::string(what) + ": shape is too large");
    }
  }
  const int64_t n = t.numel();
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      throw ValueError(std::string(what) + ": cannot reshape " + shape_str(t.shape()) + " into " + shape_str(shape));
    shape[infer] = n / known;
  } else if (known != n) {
    throw ValueError(std::string(what) + ": cannot reshape " + shape_str(t.shape()) + " (" + std::to_string(n) +
                     " elements) into " + shape_str(shape));
  }
  if (shape.size() > size_t(kMaxDims)) throw ValueError(std::string(what) + ": more than 8 dimensions");
  return shape;
}

bool Tensor::can_view(const Shape& shape) const {
  Shape st;
  return view_strides(*this, shape, st);
}

Tensor Tensor::view(const Shape& shape_in) const {
  const Shape shape = resolve_shape(*this, shape_in, "view");
  if (is_quantized(dtype_)) {
    if (shape.empty() || shape.back() != shape_.back() || !is_contiguous())
      throw ValueError("view: a quantized tensor can only be viewed contiguously with the same last dimension");
    return Tensor(owner_, data_, dtype_, shape, contiguous_strides(shape, dtype_), readonly_);
  }
  Shape st;
  if (!view_strides(*this, shape, st))
    throw ValueError("view: the strides of " + shape_str(shape_) + " cannot express shape " + shape_str(shape) +
                     " without a copy; use reshape() or contiguous() first");
  return Tensor(owner_, data_, dtype_, shape, st, readonly_);
}

Tensor Tensor::broadcast_to(const Shape& shape) const {
  if (shape.size() < shape_.size())
    throw ValueError("broadcast_to: cannot broadcast " + shape_str(shape_) + " to " + shape_str(shape));
  const size_t off = shape.size() - shape_.size();
  Shape st(shape.size(), 0);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i < off) continue;
    const int64_t d = shape_[i - off];
    if (d == shape[i]) st[i] = strides_[i - off];
    else if (d == 1) st[i] = 0;
    else throw ValueError("broadcast_to: cannot broadcast " + shape_str(shape_) + " to " + shape_str(shape));
  }
  return Tensor(owner_, data_, dtype_, shape, st, true);
}

Tensor Tensor::as_readonly() const {
  Tensor r = *this;
  r.readonly_ = true;
  return r;
}

Tensor Tensor::reshape(const Shape& shape_in) const {
  const Shape shape = resolve_shape(*this, shape_in, "reshape");
  if (can_view(shape) && !is_quantized(dtype_)) return view(shape);
  return contiguous().view(shape);
}

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor r = empty(shape_, dtype_);
  r.copy_from(*this);
  return r;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  Tensor r = empty(shape_, dtype);
  r.copy_from(*this);
  return r;
}

void Tensor::copy_from(const Tensor& src) {
  if (readonly_) throw ValueError("copy_from: destination is read-only");
  if (src.shape() != shape_)
    throw ValueError("copy_from: shape " + shape_str(src.shape()) + " does not match " + shape_str(shape_));
  ops::copy(src, *this);
}

std::string Tensor::repr() const {
  std::ostringstream o;
  o << "Tensor(shape=" << shape_str(shape_) << ", dtype=" << name(dtype_);
  if (!is_contiguous()) o << ", strided";
  if (readonly_) o << ", readonly";
  o << ")";
  return o.str();
}

}  // namespace lb
