// The machine's measured ceilings, for benchmarks to report speed as a fraction of what the CPU
// can do (bench/, lmblocks.ceilings). Both run on the lmblocks pool and use the active ISA's
// widest vectors, so a ratio against them says how close a kernel is to the hardware.
#pragma once
#include <cstdint>

namespace lb {

// fp32 GFLOP/s of a register-resident FMA loop on `threads` threads (one chunk each), best of a
// few repetitions that together take about `seconds`. An FMA counts as 2 FLOPs.
double measure_fma_peak(int threads = 1, double seconds = 0.3);

// GB/s of a streaming read (a sum) of a `bytes`-sized buffer split over `threads` threads, best of
// `reps`. The default 1 GiB is far larger than any L3, so this is DRAM bandwidth.
double measure_read_bandwidth(int64_t bytes = int64_t(1) << 30, int threads = 1, int reps = 3);

}  // namespace lb
