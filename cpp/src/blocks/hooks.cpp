// Hooks: what a forward pass lets Python see (captures) or change (replacements), by block path.
// Blocks call their children through Block::run, which is forward() plus one pointer test when no
// hooks are set; everything below runs only when some are.
#include <cstring>

#include "lmblocks/blocks.h"
#include "lmblocks/error.h"

namespace lb::blocks {

namespace {

// Points a pattern's last name may pick; any other last name is part of the block path ("out").
constexpr const char* kPoints[] = {"in", "out", "probs", "router", "experts", "expert_weights", "dt", "state_norm"};

bool is_point(const std::string& s) {
  for (const char* p : kPoints)
    if (s == p) return true;
  return false;
}

// fnmatch-style: '*' matches within one dot-separated name, "**" across names.
bool match(const char* p, const char* s) {
  for (; *p; ++p, ++s) {
    if (*p == '*') {
      const bool deep = p[1] == '*';
      const char* rest = p + (deep ? 2 : 1);
      for (const char* t = s;; ++t) {
        if (match(rest, t)) return true;
        if (!*t || (!deep && *t == '.')) return false;
      }
    }
    if (*s != *p) return false;
  }
  return *s == 0;
}

}  // namespace

bool glob_match(const std::string& pattern, const std::string& path) { return match(pattern.c_str(), path.c_str()); }

std::vector<BlockPtr> Block::children() const {
  std::vector<BlockPtr> c;
  for (auto& [name, b] : named_children()) c.push_back(b);
  return c;
}

Tensor Block::run(Context& ctx, const Tensor& x) {
  if (!ctx.hooks) return forward(ctx, x);
  Hooks& h = *ctx.hooks;
  if (h.wants(path, "in")) h.capture(path, "in", ctx, x);
  Tensor y = forward(ctx, x);
  if (h.replaces(path)) {
    Tensor r = h.replace(path, ctx, y);
    if (r.raw() != y.raw()) {
      if (r.shape() != y.shape())
        throw ValueError("hook on " + path + ": the replacement has shape " + shape_str(r.shape()) +
                         "; the block's output has " + shape_str(y.shape()));
      ops::copy(r, y);  // in place: a residual container may hold y as its stream
    }
  }
  if (h.wants(path, "out")) h.capture(path, "out", ctx, y);
  return y;
}

// ---- PatternHooks ---------------------------------------------------------------------------------

HookPattern split_pattern(const std::string& pattern) {
  if (pattern.empty()) throw ValueError("hooks: an empty pattern");
  const size_t dot = pattern.rfind('.');
  const std::string last = dot == std::string::npos ? pattern : pattern.substr(dot + 1);
  if (is_point(last)) {
    if (dot == std::string::npos) throw ValueError("hooks: pattern '" + pattern + "' names a point but no block");
    return {pattern.substr(0, dot), last};
  }
  return {pattern, "out"};
}

void PatternHooks::add_capture(const std::string& pattern) {
  captures_.push_back(split_pattern(pattern));
  capture_patterns.push_back(pattern);
}

void PatternHooks::add_replace(const std::string& pattern, Replace fn) {
  HookPattern s = split_pattern(pattern);
  if (s.point != "out")
    throw ValueError("hooks: pattern '" + pattern + "' replaces point '" + s.point + "'; only a block's output can be replaced");
  replaces_.push_back({std::move(s), std::move(fn)});
}

bool PatternHooks::wants(const std::string& path, const char* point) const {
  if (path.empty()) return false;
  for (const HookPattern& p : captures_)
    if (p.point == point && glob_match(p.block, path)) return true;
  return false;
}

void PatternHooks::capture(const std::string& path, const char* point, const Context& ctx, const Tensor& value) {
  Record r;
  r.key = path + "." + point;
  r.value = value.clone();
  r.pos = ctx.pos;
  r.seq.resize(size_t(ctx.N));
  for (const Run& run : ctx.runs)
    for (int64_t t = 0; t < run.n; ++t) r.seq[size_t(run.begin + t)] = run.seq;
  records.push_back(std::move(r));
}

bool PatternHooks::replaces(const std::string& path) const {
  if (path.empty()) return false;
  for (const auto& [p, fn] : replaces_)
    if (glob_match(p.block, path)) return true;
  return false;
}

Tensor PatternHooks::replace(const std::string& path, const Context& ctx, const Tensor& out) {
  Tensor y = out;
  for (const auto& [p, fn] : replaces_)
    if (glob_match(p.block, path)) y = fn(path, ctx, y);
  return y;
}

}  // namespace lb::blocks
