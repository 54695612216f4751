// The element-type conversion kernels (defined in convert.cpp), for the ops that widen f16/bf16 rows.
#pragma once
#include <cstdint>

#include "ops/kernel.h"

// x (n,) -> y (n,)
LB_DECLARE_KERNEL(void, f16_to_f32, (const uint16_t* x, float* y, int64_t n))
LB_DECLARE_KERNEL(void, bf16_to_f32, (const uint16_t* x, float* y, int64_t n))
LB_DECLARE_KERNEL(void, f32_to_f16, (const float* x, uint16_t* y, int64_t n))
