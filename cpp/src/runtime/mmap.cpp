// Read-only memory maps: loaders view tensors straight out of the file, nothing copied.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>

#include "lmblocks/error.h"
#include "lmblocks/tensor.h"

namespace lb {
namespace {

// Live mappings by start address -> end, so release_mapped_pages only ever touches file pages.
struct Mappings {
  std::mutex mu;
  std::map<const std::byte*, const std::byte*> live;
};
Mappings& mappings() {
  static Mappings* m = new Mappings;  // never destroyed: files may be unmapped during interpreter shutdown
  return *m;
}

}  // namespace

void release_mapped_pages(const void* p, int64_t n) {
  const auto* b = static_cast<const std::byte*>(p);
  Mappings& m = mappings();
  std::lock_guard<std::mutex> lock(m.mu);
  auto it = m.live.upper_bound(b);
  if (it == m.live.begin() || n <= 0) return;
  --it;
  if (b + n > it->second) return;
  const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (uintptr_t(b) + page - 1) / page * page, hi = uintptr_t(b + n) / page * page;
  if (hi <= lo) return;
  // No huge page mappings over the range first: on kernels that keep file pages in large folios, one
  // fault on a small tensor beside it (a norm's weights) would otherwise map the whole 2 MiB folio back,
  // released pages included (SmolLM2 Q4_K_M: 46 MiB of packed matrices resident twice after one token).
  // The range becomes its own VMA, so neither that nor fault-around can reach into it from outside.
#ifdef MADV_NOHUGEPAGE
  ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_NOHUGEPAGE);
#endif
  ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

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
    std::lock_guard<std::mutex> lock(mappings().mu);
    mappings().live[f->data_] = f->data_ + f->size_;
  }
  ::close(fd);  // the mapping keeps the file alive
  f->self_ = f;
  return f;
}

MappedFile::~MappedFile() {
  if (!data_) return;
  {
    std::lock_guard<std::mutex> lock(mappings().mu);
    mappings().live.erase(data_);
  }
  ::munmap(data_, size_t(size_));
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
