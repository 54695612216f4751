// lb::Tensor: a typed, strided view of memory held alive by a shared owner.
// Owners are a 64-byte aligned allocation, a NumPy array (bindings), or a memory-mapped file.
// Strides are in bytes. Quantized tensors are blocked along their last dimension, which must be
// contiguous and a whole number of blocks; only the leading dimensions can be viewed freely.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lmblocks/dtype.h"
#include "lmblocks/shape.h"

namespace lb {

constexpr int64_t kAlignment = 64;

class Tensor {
 public:
  Tensor() = default;
  // A view of memory owned by `owner`. Checks dims and strides are sane; does not check bounds
  // (the caller knows the extent; see MappedFile::tensor for a checked one).
  Tensor(std::shared_ptr<void> owner, void* data, DType dtype, Shape shape, Shape strides,
         bool readonly = false);

  static Tensor empty(const Shape& shape, DType dtype = DType::f32);  // 64-byte aligned, uninitialized
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);
  static Shape contiguous_strides(const Shape& shape, DType dtype);

  bool defined() const { return data_ != nullptr || owner_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // bytes
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const;      // negative i counts from the end
  int64_t numel() const;
  int64_t nbytes() const;        // bytes of the elements (not the span of a strided view)
  int64_t itemsize() const;      // bytes per element; 0 for quantized types
  bool readonly() const { return readonly_; }
  bool is_contiguous() const;
  // Byte range [lo, hi) the view can touch, for overlap checks.
  std::pair<const std::byte*, const std::byte*> byte_span() const;

  template <class T> T* data() const { return reinterpret_cast<T*>(data_); }
  void* raw() const { return data_; }
  const std::shared_ptr<void>& owner() const { return owner_; }

  // Views (never copy).
  Tensor slice(int axis, int64_t start, int64_t stop, int64_t step = 1) const;
  Tensor select(int axis, int64_t index) const;   // drops the axis
  Tensor unsqueeze(int axis) const;
  Tensor transpose(int a, int b) const;
  Tensor permute(const std::vector<int>& axes) const;
  Tensor view(const Shape& shape) const;          // throws when the strides cannot express it
  bool can_view(const Shape& shape) const;
  Tensor broadcast_to(const Shape& shape) const;  // stride-0 view
  Tensor as_readonly() const;

  // Copies.
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a contiguous copy
  Tensor contiguous() const;                 // itself when already contiguous
  Tensor clone() const;                      // always a fresh contiguous copy
  Tensor to(DType dtype) const;              // conversion between plain types (copy)
  void copy_from(const Tensor& src);         // same shape; converts plain types

  std::string repr() const;

 private:
  std::shared_ptr<void> owner_;
  std::byte* data_ = nullptr;
  DType dtype_ = DType::f32;
  Shape shape_;
  Shape strides_;
  bool readonly_ = false;
};

std::string shape_str(const Shape& s);
int normalize_axis(int axis, int ndim, const char* what);  // throws lb::IndexError
int64_t checked_numel(const Shape& shape);                   // throws lb::ValueError on overflow or < 0

// A read-only memory map of a whole file, shared by every tensor viewed from it.
// Drops this process's pages of [p, p + n) that lie inside a live MappedFile (whole pages only): they are
// read from the file again if touched. For data that has been copied elsewhere (repacked weights).
void release_mapped_pages(const void* p, int64_t n);

class MappedFile {
 public:
  static std::shared_ptr<MappedFile> open(const std::string& path);  // throws lb::IOError
  ~MappedFile();
  const std::string& path() const { return path_; }
  int64_t size() const { return size_; }
  const std::byte* data() const { return data_; }
  // A read-only tensor at [offset, offset + nbytes): bounds and overflow are checked against the
  // file, so a header field cannot make us read past its end.
  Tensor tensor(int64_t offset, const Shape& shape, DType dtype) const;

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

 private:
  MappedFile() = default;
  std::string path_;
  std::byte* data_ = nullptr;
  int64_t size_ = 0;
  std::weak_ptr<const MappedFile> self_;
};

}  // namespace lb
