// ggml block formats: conversion to float32 (the reference path for GGUF models).
// The formats themselves are rows of the type table (cpp/src/quant/type_traits.cpp).
#pragma once
#include "lmblocks/tensor.h"

namespace lb {

// t: (..., K) of any type with a to_float (f32, f16, bf16, f64, every ggml block type) -> a new
// contiguous f32 tensor (..., K). Leading axes may be strided views; quantized rows are whole blocks.
// Throws lb::TypeError for types without a conversion (integers), lb::ValueError for an undefined t.
Tensor dequantize(const Tensor& t);

}  // namespace lb
