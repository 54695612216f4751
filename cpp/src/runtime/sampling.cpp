// llama.cpp's default sampler chain on one logits vector (see lmblocks/sampling.h). The vocabulary is
// read once: blocks with no logit that could enter the current top k are skipped after a vectorized
// comparison, and only the candidates are partitioned and sorted. The float64 arithmetic follows the NumPy
// chain this replaced step by step (sums pairwise as np.sum, cumulative sums left to right).
#include "lmblocks/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "lmblocks/error.h"

namespace lb::sampling {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t kBlock = 64;  // logits per block of the scan

// np.add.reduce's pairwise summation (numpy/_core/src/umath/loops_utils.h.src), so a softmax
// normalizes exactly as NumPy did: 8 accumulators up to 128 values, halves above.
double pairwise_sum(const double* a, int64_t n) {
  if (n < 8) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += a[i];
    return s;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    double s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) s += a[i];
    return s;
  }
  int64_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// Whether any of x[0, n) is >= bar; sets `bad` if any is NaN or +inf. Integer OR-reductions of
// comparisons, which the compiler vectorizes (a float max reduction it would not, without -ffast-math).
template <class T>
bool any_ge(const T* x, int64_t n, T bar, bool& bad) {
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;  // masks as wide as T
  constexpr T inf = std::numeric_limits<T>::infinity();
  I hit = 0, b = 0;
  for (int64_t i = 0; i < n; ++i) {
    hit |= I(x[i] >= bar);
    b |= I(!(x[i] < inf));
  }
  bad |= b != 0;
  return hit != 0;
}

// The largest T that is <= t, so `x >= bar_below(t)` holds for every x with double(x) >= t.
template <class T>
T bar_below(double t) {
  const T b = T(t);
  return double(b) > t ? std::nextafter(b, -std::numeric_limits<T>::infinity()) : b;
}

// Rank order: higher logit first, then lower id.
inline bool better(double va, int64_t ia, double vb, int64_t ib) { return va > vb || (va == vb && ia < ib); }

}  // namespace

template <class T>
void Sampler::penalize(const T* x, int64_t V, const int64_t* history, int64_t n_history, bool& bad_history) {
  pen_.clear();
  const int64_t n = p_.repeat_last_n;
  if (n == 0 || (p_.repeat_penalty == 1.0 && p_.frequency_penalty == 0.0 && p_.presence_penalty == 0.0)) return;
  const int64_t start = n < 0 ? 0 : std::max<int64_t>(0, n_history - n);
  win_.assign(history + start, history + n_history);
  if (win_.empty()) return;
  std::sort(win_.begin(), win_.end());
  if (win_.front() < 0 || win_.back() >= V) {
    bad_history = true;
    return;
  }
  for (size_t i = 0; i < win_.size();) {
    size_t j = i;
    while (j < win_.size() && win_[j] == win_[i]) ++j;
    double v = double(x[win_[i]]);
    v = v <= 0 ? v * p_.repeat_penalty : v / p_.repeat_penalty;
    pen_.push_back({v - (double(j - i) * p_.frequency_penalty + p_.presence_penalty), win_[i]});
    i = j;
  }
}

// cand_ = the k best (penalized logit, id) in rank order. Throws on NaN, +inf or no finite logit.
template <class T>
void Sampler::select(const T* x, int64_t V, int64_t k) {
  const auto cmp = [](const Cand& a, const Cand& b) { return better(a.v, a.id, b.v, b.id); };
  const size_t np = pen_.size();
  bool bad = false;
  cand_.clear();
  if (k >= V) {  // every token is a candidate: one full sort
    cand_.resize(size_t(V));
    any_ge(x, V, T(0), bad);
    for (int64_t i = 0; i < V; ++i) cand_[size_t(i)] = {double(x[i]), i};
    for (const Cand& c : pen_) cand_[size_t(c.id)].v = c.v;
  } else {
    // A running top k: candidates gather in a buffer of `cap`; when it fills, the best k are kept and
    // the k-th best becomes the bar (thr_v, thr_id) a later candidate must beat. Blocks with no logit
    // at or above the bar are only checked for NaN and +inf.
    const size_t cap = std::max<size_t>(4 * size_t(k), 128);
    if (cand_.capacity() < cap) cand_.reserve(cap);
    double thr_v = -kInf;
    int64_t thr_id = std::numeric_limits<int64_t>::max();
    T bar = -std::numeric_limits<T>::infinity();
    const auto push = [&](double v, int64_t id) {
      if (!better(v, id, thr_v, thr_id)) return;
      cand_.push_back({v, id});
      if (cand_.size() == cap) {
        std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), cmp);
        cand_.resize(size_t(k));
        thr_v = cand_.back().v, thr_id = cand_.back().id;
        bar = bar_below<T>(thr_v);
      }
    };
    for (const Cand& c : pen_) push(c.v, c.id);
    size_t pi = 0;  // penalized ids were pushed above with their new logits; the scan skips them
    for (int64_t i0 = 0; i0 < V; i0 += kBlock) {
      const int64_t i1 = std::min(V, i0 + kBlock);
      if (!any_ge(x + i0, i1 - i0, bar, bad)) continue;
      for (int64_t i = i0; i < i1; ++i) {
        if (!(x[i] >= bar)) continue;
        while (pi < np && pen_[pi].id < i) ++pi;
        if (pi < np && pen_[pi].id == i) continue;
        push(double(x[i]), i);
      }
    }
    if (cand_.size() > size_t(k)) {
      std::nth_element(cand_.begin(), cand_.begin() + (k - 1), cand_.end(), cmp);
      cand_.resize(size_t(k));
    }
  }
  if (bad) throw ValueError("logits must not contain NaN or +inf");
  std::sort(cand_.begin(), cand_.end(), cmp);
  if (cand_[0].v == -kInf) {  // the best penalized logit is -inf: all logits are, or penalties overflowed
    bool finite = false;
    for (int64_t i = 0; i < V && !finite; ++i) finite = x[i] > -std::numeric_limits<T>::infinity();
    throw ValueError(finite ? "logits are all -inf after the penalties: there is no token to sample"
                            : "logits are all -inf: there is no token to sample");
  }
}

template <class T>
size_t Sampler::chain(const T* x, int64_t V, const int64_t* history, int64_t n_history) {
  if (V < 1) throw ValueError("logits must have shape (vocab,) with vocab >= 1");
  bool bad_history = false;
  penalize(x, V, history, n_history, bad_history);
  const bool greedy = p_.temperature == 0.0;
  select(x, V, greedy ? 1 : (p_.top_k > 0 && p_.top_k < V ? p_.top_k : V));
  if (bad_history) throw ValueError("history holds token ids outside [0, " + std::to_string(V) + ")");
  size_t n = cand_.size();
  w_.resize(n);
  if (greedy) {  // the largest penalized logit, lowest id among ties
    w_[0] = 1.0;
    return 1;
  }
  const double lg0 = cand_[0].v;
  if (p_.top_p < 1.0) {  // the shortest prefix whose probability reaches top_p (all if none does)
    for (size_t i = 0; i < n; ++i) w_[i] = std::exp(cand_[i].v - lg0);
    const double sum = pairwise_sum(w_.data(), int64_t(n));
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cum += w_[i] / sum;
      if (cum >= p_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (p_.min_p > 0.0) {  // a prefix, as the candidates are sorted
    const double bar = lg0 + std::log(p_.min_p);
    size_t m = 0;
    while (m < n && cand_[m].v >= bar) ++m;
    n = m;
  }
  const double t = p_.temperature, y0 = lg0 / t;
  for (size_t i = 0; i < n; ++i) w_[i] = std::exp(cand_[i].v / t - y0);
  const double sum = pairwise_sum(w_.data(), int64_t(n));
  for (size_t i = 0; i < n; ++i) w_[i] /= sum;
  return n;
}

template <class T>
int64_t Sampler::sample(const T* x, int64_t V, const int64_t* history, int64_t n_history, double u, bool& used_u) {
  std::lock_guard lock(mu_);
  const size_t n = chain(x, V, history, n_history);
  used_u = n > 1;
  if (n == 1) return cand_[0].id;
  for (size_t i = 1; i < n; ++i) w_[i] += w_[i - 1];  // np.cumsum: left to right
  const double target = u * w_[n - 1];
  const size_t i = size_t(std::lower_bound(w_.begin(), w_.begin() + ptrdiff_t(n), target) - w_.begin());
  return cand_[std::min(i, n - 1)].id;
}

template <class T>
void Sampler::probs(const T* x, int64_t V, const int64_t* history, int64_t n_history, double* out) {
  std::lock_guard lock(mu_);
  const size_t n = chain(x, V, history, n_history);
  std::fill(out, out + V, 0.0);
  for (size_t i = 0; i < n; ++i) out[cand_[i].id] = w_[i];
}

template int64_t Sampler::sample<float>(const float*, int64_t, const int64_t*, int64_t, double, bool&);
template int64_t Sampler::sample<double>(const double*, int64_t, const int64_t*, int64_t, double, bool&);
template void Sampler::probs<float>(const float*, int64_t, const int64_t*, int64_t, double*);
template void Sampler::probs<double>(const double*, int64_t, const int64_t*, int64_t, double*);

}  // namespace lb::sampling
