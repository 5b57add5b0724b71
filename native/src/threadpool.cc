// ThreadPool: generation-counter handoff with a bounded spin, a bounded yield loop, then a condition variable.
// Owns only thread lifetime and the barrier; what runs is the caller's business.
#include "threadpool.h"

#include <chrono>

// No PAUSE in the spin loops: under a hypervisor with pause-loop exiting, a vCPU spinning on PAUSE is
// descheduled, turning a microsecond handoff into milliseconds. Plain loads of the atomic spin instead.
#define LX_PAUSE() std::atomic_signal_fence(std::memory_order_seq_cst)

// Spin iterations (about a microsecond) before a worker starts yielding or the caller yields the core: longer
// plain spins steal the core from whoever holds the work when the machine is shared (measured: 5× slower steps).
constexpr int kSpins = 4000;
// Then a worker yields its core in a loop for up to this long before it sleeps. A decode step runs ~200
// parallel regions with a few microseconds of serial work between them; a sleeping worker took 11-20 µs on
// average to start its share (measured on the bench model), and the caller waited that long at each region's
// end. A yield hands the core to any runnable thread, so this wait takes nothing from a busy machine.
constexpr auto kYieldWait = std::chrono::microseconds(200);

namespace lx {

ThreadPool::ThreadPool(int n_threads) : n_(n_threads < 1 ? 1 : n_threads) {
  for (int t = 1; t < n_; t++) threads_.emplace_back([this, t] { worker(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& th : threads_) th.join();
}

void ThreadPool::worker(int tid) {
  uint64_t seen = 0;
  for (;;) {
    uint64_t g;
    int spins = 0;
    std::chrono::steady_clock::time_point yield_until;
    while ((g = generation_.load(std::memory_order_acquire)) == seen) {
      if (++spins < kSpins) {
        LX_PAUSE();
        continue;
      }
      if (spins == kSpins) yield_until = std::chrono::steady_clock::now() + kYieldWait;
      if (std::chrono::steady_clock::now() < yield_until) {
        std::this_thread::yield();
        continue;
      }
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      sleepers_.fetch_sub(1);
      spins = 0;
    }
    seen = g;
    if (stop_.load()) return;
    (*job_)(tid, n_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run(const std::function<void(int, int)>& fn) {
  if (n_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_ - 1, std::memory_order_release);
  {
    // The lock orders the generation bump against a worker that is about to sleep.
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  if (sleepers_.load() > 0) cv_.notify_all();
  fn(0, n_);
  // Spin briefly for the others, then yield the core: on a busy machine a worker may be waiting for one.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; spins++) {
    if (spins < kSpins) LX_PAUSE();
    else std::this_thread::yield();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn, int64_t work) {
  if (n <= 0) return;
  if (work >= 0 && work < kMinParallelWork) {
    fn(0, n);
    return;
  }
  if (grain < 1) grain = 1;
  int64_t units = (n + grain - 1) / grain;
  int nt = int(units < n_ ? units : n_);
  if (nt <= 1) {
    fn(0, n);
    return;
  }
  run([&](int tid, int) {
    if (tid >= nt) return;
    int64_t u0 = units * tid / nt, u1 = units * (tid + 1) / nt;
    int64_t b = u0 * grain, e = u1 * grain < n ? u1 * grain : n;
    if (b < e) fn(b, e);
  });
}

}  // namespace lx
