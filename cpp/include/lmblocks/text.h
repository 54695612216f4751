// Text data of tokenizers: vocabularies held compactly, and the merge loops of the BPE and
// SentencePiece tokenizers. A 262k-token vocabulary (Gemma 3) as Python str objects and a dict costs
// ~50 MB, a fifth of the model it belongs to; as a StringTable it is one buffer, an offset array and
// a hash index (~6 MB), and lookups and merges run without creating Python objects.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace lb::text {

// An immutable list of byte strings in one buffer, with a hash index built on first lookup.
class StringTable {
 public:
  StringTable() = default;
  StringTable(const StringTable&) = delete;
  StringTable& operator=(const StringTable&) = delete;

  // `count` GGUF strings (u64 byte count, bytes) read from file[pos, size): returns the table and sets
  // `end` to the offset after the last. Throws ValueError naming the element and byte offset of a string
  // that runs past `size`; nothing is allocated for a count the bytes could not hold.
  static std::unique_ptr<StringTable> from_gguf(const std::byte* file, size_t size, size_t pos, uint64_t count,
                                                size_t& end);

  void push_back(std::string_view s);  // only before the first find()
  size_t size() const { return offsets_.size() - 1; }
  std::string_view operator[](size_t i) const {
    return {blob_.data() + offsets_[i], size_t(offsets_[i + 1] - offsets_[i])};
  }
  size_t nbytes() const { return blob_.size() + offsets_.size() * sizeof(uint32_t) + index_bytes(); }

  // The first index of `s`, or -1.
  int64_t find(std::string_view s) const;
  // The first (earlier, later) pair of equal strings, or (-1, -1).
  std::pair<int64_t, int64_t> first_duplicate() const;

 private:
  void build_index() const;
  size_t index_bytes() const { return index_.size() * sizeof(int32_t); }

  std::string blob_;
  std::vector<uint32_t> offsets_{0};  // strings are < 4 GiB in all (checked)
  mutable std::vector<int32_t> index_;  // open addressing, -1 = empty; a power-of-two size
  mutable std::once_flag indexed_;
  mutable std::pair<int64_t, int64_t> duplicate_{-1, -1};
};

// Byte-level BPE (GPT-2 family) of one pre-tokenized word, as llama.cpp's llm_tokenizer_bpe: the word's
// bytes become GPT-2's printable characters, adjacent symbols merge lowest merge rank first (leftmost on
// ties), where the rank of (a, b) is the index of "a b" in `merges`; symbols become token ids, a symbol
// that is not a token falls back to its ASCII bytes as one-character tokens. With `ignore_merges` a word
// that is a token is taken whole (Llama 3). Appends to `out`.
void bpe_word(const StringTable& vocab, const StringTable& merges, std::string_view word, bool ignore_merges,
              std::vector<int32_t>& out);

// SentencePiece BPE (llama.cpp's llm_tokenizer_spm) of UTF-8 text whose spaces are already U+2581:
// adjacent symbols merge highest score first (leftmost on ties) while the merged text is a token;
// characters that are not tokens become their bytes' tokens `byte_ids[b]` (a negative entry: no such
// token, ValueError). Appends to `out`.
void spm_tokenize(const StringTable& vocab, const float* scores, const int32_t* byte_ids, std::string_view text,
                  std::vector<int32_t>& out);

}  // namespace lb::text
