// A fixed pool of worker threads that runs one parallel region at a time; the calling thread joins in.
// Workers spin briefly for the next region (a decode step issues hundreds of them), then yield their core in a
// loop for up to 200 µs, then sleep.
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace lx {

// Runs `back` on a helper thread while `front` runs on this one, and returns when both are done; where no
// thread can be had, runs both here. Neither may throw: an exception past a joinable std::thread aborts. For
// one-off halves of a large job outside the pool (file reads, LoRA slot fills on a loader thread).
template <typename Front, typename Back>
void run_beside(Front&& front, Back&& back) {
  std::thread helper;
  try {
    helper = std::thread([&back] { back(); });
  } catch (const std::system_error&) {
    back();
  }
  front();
  if (helper.joinable()) helper.join();
}

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);  // total threads including the caller; >= 1
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  // Runs fn(tid, n_threads) on every thread (tid 0 = caller) and returns when all are done.
  void run(const std::function<void(int, int)>& fn);
  // Splits [0, n) into contiguous chunks of `grain`-aligned size, one per thread. `work` (multiply-adds, say)
  // below kMinParallelWork runs on the caller alone: waking threads would cost more than it saves.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn, int64_t work = -1);
  static constexpr int64_t kMinParallelWork = 1 << 15;

 private:
  void worker(int tid);
  int n_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

}  // namespace lx
