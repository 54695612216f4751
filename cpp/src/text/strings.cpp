// StringTable: byte strings in one buffer, found through an open-addressing index of their ids.
#include <cstring>
#include <functional>

#include "lmblocks/error.h"
#include "lmblocks/text.h"

namespace lb::text {

namespace {

uint64_t read_u64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // GGUF is little-endian, as every CPU lmblocks builds for
  return v;
}

std::string past_end(uint64_t i, size_t at, uint64_t nbytes, size_t size) {
  return "[" + std::to_string(i) + "] [offset " + std::to_string(at) + ", " + std::to_string(nbytes) +
         " bytes] runs past the end of the file (" + std::to_string(size) + " bytes)";
}

}  // namespace

std::unique_ptr<StringTable> StringTable::from_gguf(const std::byte* data, size_t size, size_t pos,
                                                    uint64_t count, size_t& end) {
  // Pass 1 checks every length against the bytes left and sums them, so pass 2 allocates exactly once.
  if (pos > size) throw ValueError("[0] [offset " + std::to_string(pos) + "] is past the end of the file");
  const size_t start = pos;
  size_t total = 0;
  for (uint64_t i = 0; i < count; ++i) {
    if (size - pos < 8) throw ValueError(past_end(i, pos, 8, size) + " (its length)");
    const uint64_t n = read_u64(data + pos);
    pos += 8;
    if (n > size - pos) throw ValueError(past_end(i, pos, n, size));
    pos += size_t(n);
    total += size_t(n);
  }
  if (total > UINT32_MAX) throw ValueError("[0] the strings hold " + std::to_string(total) + " bytes, more than 4 GiB");
  auto t = std::make_unique<StringTable>();
  t->blob_.resize(total);
  t->offsets_.resize(size_t(count) + 1);
  pos = start;
  size_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const size_t n = size_t(read_u64(data + pos));
    std::memcpy(t->blob_.data() + at, data + pos + 8, n);
    pos += 8 + n;
    at += n;
    t->offsets_[size_t(i) + 1] = uint32_t(at);
  }
  end = pos;
  return t;
}

void StringTable::push_back(std::string_view s) {
  if (!index_.empty()) throw ValueError("StringTable: cannot add strings after the first lookup");
  if (blob_.size() + s.size() > UINT32_MAX) throw ValueError("StringTable: more than 4 GiB of strings");
  blob_.append(s);
  offsets_.push_back(uint32_t(blob_.size()));
}

void StringTable::build_index() const {
  if (size() >= (size_t(1) << 30)) throw ValueError("StringTable: more than 2**30 strings cannot be indexed");
  size_t cap = 16;
  while (cap < 2 * size()) cap <<= 1;
  index_.assign(cap, -1);
  const std::hash<std::string_view> hash;
  for (size_t i = 0; i < size(); ++i) {
    const std::string_view s = (*this)[i];
    for (size_t h = hash(s) & (cap - 1);; h = (h + 1) & (cap - 1)) {
      const int32_t j = index_[h];
      if (j < 0) {
        index_[h] = int32_t(i);
        break;
      }
      if ((*this)[size_t(j)] == s) {
        if (duplicate_.first < 0) duplicate_ = {j, int64_t(i)};
        break;
      }
    }
  }
}

int64_t StringTable::find(std::string_view s) const {
  std::call_once(indexed_, [this] { build_index(); });
  const size_t mask = index_.size() - 1;
  for (size_t h = std::hash<std::string_view>()(s) & mask;; h = (h + 1) & mask) {
    const int32_t j = index_[h];
    if (j < 0) return -1;
    if ((*this)[size_t(j)] == s) return j;
  }
}

std::pair<int64_t, int64_t> StringTable::first_duplicate() const {
  std::call_once(indexed_, [this] { build_index(); });
  return duplicate_;
}

}  // namespace lb::text
