// Hardware probes for the benchmarks: sustained memory read bandwidth and FMA throughput of this machine,
// measured with the same thread count the engine uses. Nothing on the serving path calls them.
#pragma once

namespace lx {
double probe_read_bandwidth(int threads);  // bytes per second, best of several passes over 1 GiB
double probe_fma_flops(int threads);       // float32 FLOP per second with AVX2 FMA
}  // namespace lx
