// Read-only memory maps: loaders view tensors straight out of the file, nothing copied.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "lmblocks/error.h"
#include "lmblocks/tensor.h"

namespace lb {

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IOError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    throw IOError(path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IOError(path + ": not a regular file");
  }
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = path;
  f->size_ = int64_t(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, size_t(f->size_), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      throw IOError(path + ": mmap failed: " + std::strerror(e));
    }
    f->data_ = static_cast<std::byte*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
  f->self_ = f;
  return f;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(data_, size_t(size_));
}

Tensor MappedFile::tensor(int64_t offset, const Shape& shape, DType dtype) const {
  const int64_t n = checked_numel(shape);
  const auto& t = traits(dtype);
  if (!shape.empty() && shape.back() % t.block_size != 0)
    throw ValueError(path_ + ": a " + std::string(t.name) + " tensor's last dimension must be a multiple of " +
                     std::to_string(t.block_size) + ", got shape " + shape_str(shape));
  int64_t bytes;
  if (__builtin_mul_overflow(n / t.block_size, t.type_size, &bytes))
    throw ValueError(path_ + ": tensor of shape " + shape_str(shape) + " is too large");
  if (offset < 0 || offset > size_ || bytes > size_ - offset)
    throw ValueError(path_ + ": tensor of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                     " runs past the end of the file (" + std::to_string(size_) + " bytes)");
  std::shared_ptr<const MappedFile> keep = self_.lock();
  std::shared_ptr<void> owner(keep, const_cast<MappedFile*>(this));
  return Tensor(owner, data_ ? data_ + offset : nullptr, dtype, shape, Tensor::contiguous_strides(shape, dtype),
                /*readonly=*/true);
}

}  // namespace lb
