// ggml block formats: conversion to float32 (the reference path for GGUF models).
// The formats themselves are rows of the type table (cpp/src/quant/type_traits.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "lmblocks/runtime.h"
#include "lmblocks/tensor.h"

namespace lb {

// t: (..., K) of any type with a to_float (f32, f16, bf16, f64, every ggml block type) -> a new
// contiguous f32 tensor (..., K). Leading axes may be strided views; quantized rows are whole blocks.
// Throws lb::TypeError for types without a conversion (integers), lb::ValueError for an undefined t.
Tensor dequantize(const Tensor& t);

// x: (..., K) floating point (f32/f16/bf16/f64, any strides), K a multiple of t's block size -> a new
// tensor (..., K) of block type t, each row quantized by ggml's reference quantizer (bit for bit).
// Throws lb::ValueError for a type without a quantizer, a bad K, or a NaN/inf element (naming its index).
Tensor quantize(const Tensor& x, DType t);

}  // namespace lb

// ---- Quantized linear (cpp/src/ops/qlinear.cpp): activations quantized to int16 once per call, then
// every weight row's dot product read straight from its ggml blocks. Used by ops::linear and the engine.
namespace lb::ops {

// M rows of K activations as int16 blocks of 32 with scales d (per 32) and s = d * sum(q) (per 16);
// bits = 8: the same blocks on ggml's q8_0 range (|q| <= 127), which the packed kernels multiply four
// elements per instruction for M >= 4 (activation_bits()).
struct QuantizedRows {
  int64_t M = 0, K = 0;
  int bits = 16;
  Buffer<int16_t> q;
  Buffer<float> d, s;
};

// Whether x (M rows) @ W^T with W of type t takes the quantized path on this CPU: ggml blocks always
// with AVX-512 VNNI, for M < 4 (decode) with AVX2; f16/bf16 for M >= 4 with AVX-512 VNNI (chunks
// rounded to 12-bit integers); otherwise ops::linear dequantizes panels for sgemm.
bool qlinear_fast(DType t, int64_t M);
// The bits to quantize M rows with for the packed kernels: activation_bits() for M >= 4, else 16.
int activation_bits_for(int64_t M);
// x: M rows of K floats, `ld` apart; K % 32 == 0. `reference` forces the scalar kernels.
QuantizedRows quantize_rows(const float* x, int64_t M, int64_t K, int64_t ld, bool reference = false, int bits = 16);
// y (M, N) row-major = a @ W^T for W (N, K) of ggml block type `type`, rows `row_bytes` apart.
void qlinear_rows(const QuantizedRows& a, DType type, const std::byte* w, int64_t row_bytes, int64_t N, float* y,
                  bool reference = false);

// A weight matrix repacked once, at load, for the AVX-512 kernels (layout: cpp/src/ops/qlinear.cpp):
// groups of 16 rows whose quants are interleaved so that one 64-byte vector holds four consecutive
// elements of each of the 16 rows, and whose scales sit together as vectors over the rows. Types:
// q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k. An f16/bf16 entry holds no data: it marks a model's
// matrix as one whose prefill may round weights to 12 bits per chunk (qlinear_fast).
struct PackedWeight {
  DType type;
  int64_t N = 0, K = 0, group_bytes = 0;
  Buffer<uint8_t> data;  // (N + 15) / 16 groups of group_bytes
};
// Whether weights of type t are repacked on this CPU (the avx512 level is active and t is one of the above).
bool packable(DType t);
// w: (N, K) of a packable type with contiguous rows -> its packed form. Throws lb::TypeError/ValueError.
std::shared_ptr<PackedWeight> pack_weight(const Tensor& w);
// From now on ops::linear reads w through p, while p lives (the caller owns p; nothing else holds it).
void register_packed(const Tensor& w, const std::shared_ptr<PackedWeight>& p);
std::shared_ptr<const PackedWeight> find_packed(const Tensor& w);
// Row r of the matrix as float32, equal bit for bit to dequantize() of the original row.
void packed_row_to_float(const PackedWeight& w, int64_t r, float* y);
// y (M, N) row-major = a @ W^T through the packed form.
void qlinear_packed(const QuantizedRows& a, const PackedWeight& w, float* y);
// qlinear_packed in two steps, for callers that run several products on one set of activations or
// split the work over the pool themselves (the MoE block): activation rows made once into what the
// packed kernels read (M < 4: each row as int8 halves, d and s copied; M >= 4: tiles of tokens), then
// any range of a weight's 16-row groups. q, d, s: row m at m * K, m * K / 32, m * K / 16 (QuantizedRows).
// bits = 8 (rows quantized with bits = 8, M >= 4): tiles of int8 quads, d, and s per half and per chunk.
struct PackedActivations {
  int64_t M = 0, K = 0;
  Buffer<int32_t> q;
  Buffer<float> d, s;
  int bits = 16;
};
PackedActivations pack_activations(const int16_t* q, const float* d, const float* s, int64_t M, int64_t K,
                                   int bits = 16);
// Columns [16 g0, min(16 g1, N)) of y (M, N), rows ldy apart, = a @ W^T, on the calling thread.
void qlinear_packed_groups(const PackedActivations& a, const PackedWeight& w, int64_t g0, int64_t g1, float* y,
                           int64_t ldy);
// ys[i] (M, ws[i]->N) row-major = a @ Wi^T for every weight, as one parallel job over all their groups
// (q/k/v, gate/up: ops::linears). qlinear_packed is its one-weight case.
void qlinear_packed(const PackedActivations& a, std::span<const PackedWeight* const> ws, std::span<float* const> ys);

// y (M, N) = x @ W^T for W (N, K) of f16 or bf16 with rows `row_bytes` apart, x rows `ldx` apart:
// each weight row widened in registers (the decode path for f16/bf16 checkpoints).
void half_linear_rows(const float* x, int64_t M, int64_t K, int64_t ldx, DType t, const std::byte* w,
                      int64_t row_bytes, int64_t N, float* y);

}  // namespace lb::ops
