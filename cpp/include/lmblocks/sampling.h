// The next token from a logits vector: llama.cpp's default sampler chain (penalties, top_k, top_p,
// min_p, temperature, dist), in float64, ties ordered by logit (high to low) then id (low to high).
// lmblocks/sampling.py documents each step; tests/ref/sampling.py is the reference.
#pragma once
#include <cstdint>
#include <mutex>
#include <vector>

namespace lb::sampling {

// Checked by the caller (lmblocks.sampling.SamplingParams); the chain assumes valid values.
struct Params {
  double temperature = 0.8;        // 0 = greedy
  int64_t top_k = 40;              // 0 = off
  double top_p = 0.95;             // 1 = off
  double min_p = 0.05;             // 0 = off
  double repeat_penalty = 1.0;     // 1 = off
  int64_t repeat_last_n = 64;      // -1 = whole history, 0 = no penalties
  double frequency_penalty = 0.0;
  double presence_penalty = 0.0;
};

// One sampler per generation: it holds the params and scratch buffers reused from call to call, so a
// call allocates nothing once the buffers have grown. Calls on one object are serialized.
//
// logits: (V,) float32 or float64, read only; no NaN or +inf, at least one finite value (ValueError).
// history: the token ids so far; the penalties read its last repeat_last_n entries, which must lie
// in [0, V) when a penalty is on (ValueError).
class Sampler {
 public:
  explicit Sampler(const Params& p) : p_(p) {}
  const Params& params() const { return p_; }

  // The token drawn with the uniform u in [0, 1): the first kept token, in rank order, whose cumulative
  // probability is >= u * total. When the chain keeps one token (always, when greedy), that token is
  // returned, u is not used and `used_u` is set to false.
  template <class T>
  int64_t sample(const T* logits, int64_t V, const int64_t* history, int64_t n_history, double u, bool& used_u);

  // The distribution sample() draws from, written to out (V,): kept tokens get their probability,
  // the others 0 (greedy: one-hot).
  template <class T>
  void probs(const T* logits, int64_t V, const int64_t* history, int64_t n_history, double* out);

 private:
  struct Cand {
    double v;    // penalized logit
    int64_t id;
  };
  // Runs the chain: leaves the n kept tokens in cand_[0, n) in rank order and their final
  // probabilities in w_[0, n); returns n.
  template <class T>
  size_t chain(const T* logits, int64_t V, const int64_t* history, int64_t n_history);
  template <class T>
  void penalize(const T* logits, int64_t V, const int64_t* history, int64_t n_history, bool& bad_history);
  template <class T>
  void select(const T* logits, int64_t V, int64_t k);

  Params p_;
  std::mutex mu_;
  std::vector<Cand> cand_;     // candidates: (max(4k, 128),), or (V,) when top_k keeps all
  std::vector<double> w_;      // (candidates,) exp, then probabilities, then cumulative sums
  std::vector<int64_t> win_;   // (repeat_last_n,) the window's ids, sorted
  std::vector<Cand> pen_;      // penalized tokens, by id
};

extern template int64_t Sampler::sample<float>(const float*, int64_t, const int64_t*, int64_t, double, bool&);
extern template int64_t Sampler::sample<double>(const double*, int64_t, const int64_t*, int64_t, double, bool&);
extern template void Sampler::probs<float>(const float*, int64_t, const int64_t*, int64_t, double*);
extern template void Sampler::probs<double>(const double*, int64_t, const int64_t*, int64_t, double*);

}  // namespace lb::sampling
