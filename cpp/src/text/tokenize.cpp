// The merge loops of byte-level BPE and SentencePiece BPE, as llama.cpp runs them (llama-vocab.cpp):
// a priority queue of adjacent symbol pairs, popped best first; an entry whose symbols have changed
// since it was queued is stale and skipped (its merged length no longer matches).
#include <array>
#include <queue>

#include "lmblocks/error.h"
#include "lmblocks/text.h"

namespace lb::text {

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for the
// code points 256, 257, ... in byte order; each as its UTF-8 encoding (1 or 2 bytes).
const std::array<std::string, 256>& byte_chars() {
  static const auto* table = [] {
    auto* t = new std::array<std::string, 256>;
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = printable ? b : 256 + extra++;
      if (cp < 0x80)
        (*t)[size_t(b)] = std::string(1, char(cp));
      else
        (*t)[size_t(b)] = {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
    }
    return t;  // leaked on purpose: no destructor runs after Python has finalized
  }();
  return *table;
}

// Bytes of the character starting at s[i]: a well-formed UTF-8 sequence is one character, any other
// byte is one by itself (as Python's surrogateescape decoding sees it).
size_t char_len(std::string_view s, size_t i) {
  const auto lead = uint8_t(s[i]);
  const size_t n = lead < 0x80 ? 1 : (lead >> 5) == 6 ? 2 : (lead >> 4) == 14 ? 3 : (lead >> 3) == 30 ? 4 : 1;
  if (n > s.size() - i) return 1;
  for (size_t k = 1; k < n; ++k)
    if ((uint8_t(s[i + k]) & 0xC0) != 0x80) return 1;
  return n;
}

// Symbols over one text: [start, start + len) with list links; len 0 once merged into the left neighbour.
struct Symbols {
  struct Sym {
    size_t start, len;
    int64_t prev, next;
  };
  std::string_view text;
  std::vector<Sym> s;

  explicit Symbols(std::string_view t) : text(t) {
    for (size_t i = 0; i < t.size();) {
      const size_t n = char_len(t, i);
      const auto k = int64_t(s.size());
      s.push_back({i, n, k - 1, k + 1});
      i += n;
    }
    if (!s.empty()) s.back().next = -1;
  }
  std::string_view view(int64_t i) const { return text.substr(s[size_t(i)].start, s[size_t(i)].len); }
  std::string_view joined(int64_t a, int64_t b) const {
    return text.substr(s[size_t(a)].start, s[size_t(a)].len + s[size_t(b)].len);
  }
  bool live_pair(int64_t a, int64_t b, size_t size) const {
    const Sym &l = s[size_t(a)], &r = s[size_t(b)];
    return l.len && r.len && l.next == b && l.len + r.len == size;
  }
  void merge(int64_t a, int64_t b) {
    Sym &l = s[size_t(a)], &r = s[size_t(b)];
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) s[size_t(r.next)].prev = a;
  }
};

// A queued pair; `key` orders it (lower first), ties go to the leftmost pair.
struct Pair {
  double key;
  int64_t left, right;
  size_t size;
  bool operator>(const Pair& o) const { return key != o.key ? key > o.key : left > o.left; }
};
using PairQueue = std::priority_queue<Pair, std::vector<Pair>, std::greater<Pair>>;

// Queues every adjacent pair through `push(a, b)` (which queues it if it may merge), then merges the
// best live pair until none is left, queueing the merged symbol's new neighbour pairs.
template <class Push>
void merge_all(Symbols& sy, PairQueue& queue, const Push& push) {
  for (size_t i = 1; i < sy.s.size(); ++i) push(int64_t(i) - 1, int64_t(i));
  while (!queue.empty()) {
    const Pair p = queue.top();
    queue.pop();
    if (!sy.live_pair(p.left, p.right, p.size)) continue;
    sy.merge(p.left, p.right);
    push(sy.s[size_t(p.left)].prev, p.left);
    push(p.left, sy.s[size_t(p.left)].next);
  }
}

// Each symbol's token id, in order; a symbol that is not a token goes to `missing(text)`.
template <class Missing>
void emit(const Symbols& sy, const StringTable& vocab, std::vector<int32_t>& out, const Missing& missing) {
  for (int64_t i = sy.s.empty() ? -1 : 0; i >= 0; i = sy.s[size_t(i)].next) {
    const std::string_view v = sy.view(i);
    const int64_t id = vocab.find(v);
    if (id >= 0)
      out.push_back(int32_t(id));
    else
      missing(v);
  }
}

}  // namespace

void bpe_word(const StringTable& vocab, const StringTable& merges, std::string_view word, bool ignore_merges,
              std::vector<int32_t>& out) {
  std::string mapped;
  for (const char c : word) mapped += byte_chars()[uint8_t(c)];
  if (ignore_merges) {
    const int64_t id = vocab.find(mapped);
    if (id >= 0) {
      out.push_back(int32_t(id));
      return;
    }
  }
  Symbols sy(mapped);
  std::string key;
  PairQueue queue;
  const auto push = [&](int64_t a, int64_t b) {
    if (a < 0 || b < 0) return;
    key.assign(sy.view(a)).append(" ").append(sy.view(b));
    const int64_t rank = merges.find(key);
    if (rank >= 0) queue.push({double(rank), a, b, sy.s[size_t(a)].len + sy.s[size_t(b)].len});
  };
  merge_all(sy, queue, push);
  emit(sy, vocab, out, [&](std::string_view v) {
    for (const char c : v) {  // llama.cpp looks up each ASCII byte as a one-character token, dropping misses
      const int64_t b = uint8_t(c) < 0x80 ? vocab.find(std::string_view(&c, 1)) : -1;
      if (b >= 0) out.push_back(int32_t(b));
    }
  });
}

void spm_tokenize(const StringTable& vocab, const float* scores, const int32_t* byte_ids, std::string_view text,
                  std::vector<int32_t>& out) {
  Symbols sy(text);
  PairQueue queue;
  const auto push = [&](int64_t a, int64_t b) {
    if (a < 0 || b < 0) return;
    const int64_t id = vocab.find(sy.joined(a, b));
    if (id >= 0) queue.push({-double(scores[id]), a, b, sy.s[size_t(a)].len + sy.s[size_t(b)].len});
  };
  merge_all(sy, queue, push);
  // Every merged symbol is a token (a pair is only queued if it is), so only single characters can
  // miss: they fall back to byte tokens (llama.cpp's resegment()).
  emit(sy, vocab, out, [&](std::string_view v) {
    for (const char c : v) {
      const int32_t b = byte_ids[uint8_t(c)];
      if (b < 0) {
        static const char* hex = "0123456789ABCDEF";
        throw ValueError(std::string("no byte token for 0x") + hex[uint8_t(c) >> 4] + hex[uint8_t(c) & 15] +
                         " in the vocabulary");
      }
      out.push_back(b);
    }
  });
}

}  // namespace lb::text
