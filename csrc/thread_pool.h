// The extension's threads. parallel_for(nthreads, ntasks, f) runs f(i) for every i in [0, ntasks) on up to
// nthreads threads, the calling thread included, tasks claimed from an atomic counter, on one of two runtimes:
//
// - torch's own OpenMP runtime (the default where torch loaded one): the GOMP_parallel entry point of the
//   library libtorch_cpu links (libgomp's ABI, which LLVM's libomp and Intel's libiomp5 export as well), found
//   with dlopen(RTLD_NOLOAD) + dlsym, never loaded or linked by us. Our work then runs on the very threads
//   torch's ops use: a second set of threads spinning after each call would compete with torch's for the
//   cores (measured: softmax of one 152,064 row then x.float(), 545 us a pair against 50). After fork() the
//   child's OpenMP state is not usable (libgomp hangs there, torch's own ops included), so a forked child
//   uses the pool below.
// - ThreadPool: a small persistent pool of our own, for builds without OpenMP (the native tests, Windows),
//   forked children, and STABLESOFTMAX_CPU_THREADS=pool.
//
// The results never depend on the runtime or on how many threads it gives: the kernels' work is split into
// tasks at fixed boundaries and combined in a fixed order.
//
// ThreadPool details: workers are created on demand and follow the thread count:
// ThreadPool::follow(torch.get_num_threads()) at an entry point retires (joins) workers beyond it, and workers that
// 16 jobs in a row have not needed are retired too, so a pool grown under torch.set_num_threads(128) shrinks back
// instead of waking 127 threads for every later job. Workers spin briefly after a job (so
// back-to-back dispatches are cheap), then sleep on a condition variable. One job runs at a time:
// a caller that finds the pool busy (another Python thread) runs its tasks inline instead of
// waiting. After fork() the child sees a different pid and builds a fresh pool; the parent's pool
// is deliberately leaked (its threads do not exist in the child), as is the live pool at exit, so
// nothing ever joins threads at teardown.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#else
#include <unistd.h>
#endif
#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#include <pthread.h>
#define SSM_HAVE_DLFCN 1
#endif
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ssm {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

inline long current_pid() {
#if defined(_WIN32)
  return long(_getpid());
#else
  return long(getpid());
#endif
}

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, std::int64_t task);
  static constexpr int kMaxWorkers = 255;
  static constexpr int kDefaultSpinUs = 200;

  // How long an idle worker spins before it sleeps: STABLESOFTMAX_POOL_SPIN_US (read once), else kDefaultSpinUs.
  static int spin_us() {
    static const int us = [] {
      const char* v = std::getenv("STABLESOFTMAX_POOL_SPIN_US");
      if (!v || !*v) return kDefaultSpinUs;
      char* end = nullptr;
      const long n = std::strtol(v, &end, 10);
      return (*end == 0 && n >= 0 && n <= 1000000) ? int(n) : kDefaultSpinUs;
    }();
    return us;
  }

  // The process's pool (a new one in a forked child).
  static ThreadPool& get() {
    std::atomic<ThreadPool*>& current = slot();
    ThreadPool* p = current.load(std::memory_order_acquire);
    if (p != nullptr && p->pid_ == current_pid()) return *p;
    ThreadPool* fresh = new ThreadPool();  // an inherited pool `p` is leaked on purpose
    if (current.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first (it has no threads yet)
    return *p;
  }

  // Retires the workers beyond num_threads - 1, num_threads being the caller's configured thread
  // count (torch.get_num_threads()), not what one small call uses. Cheap when there is nothing to
  // retire; skipped while another caller holds the pool.
  static void follow(int nthreads) {
    ThreadPool* p = slot().load(std::memory_order_acquire);
    if (p == nullptr || p->live_workers() <= (nthreads > 1 ? nthreads - 1 : 0)) return;
    ThreadPool& pool = get();  // (a fresh, empty pool in a forked child)
    std::unique_lock<std::mutex> busy(pool.dispatch_mu_, std::try_to_lock);
    if (busy.owns_lock()) pool.retire_above(nthreads - 1);
  }

  // Worker threads alive now.
  int live_workers() const { return live_.load(std::memory_order_acquire); }

  void run(int nthreads, std::int64_t ntasks, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(dispatch_mu_, std::try_to_lock);
    if (!busy.owns_lock()) {  // pool in use by another caller: do the work here
      for (std::int64_t i = 0; i < ntasks; ++i) fn(ctx, i);
      return;
    }
    wait_for_helpers();
    int helpers = nthreads - 1;
    if (std::int64_t(helpers) > ntasks - 1) helpers = int(ntasks - 1);
    // Workers no job has needed for kRetireAfter jobs in a row are retired (callers that never call
    // follow() still shrink the pool back).
    if (int(workers_.size()) > helpers) {
      idle_max_ = std::max(idle_max_, helpers);
      if (++idle_jobs_ >= kRetireAfter) retire_above(idle_max_);
    } else {
      idle_jobs_ = 0;
      idle_max_ = 0;
    }
    helpers = grow(helpers);
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    pending_.store(helpers, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(wake_mu_);
      const std::uint64_t gen = (ticket_.load(std::memory_order_relaxed) >> 16) + 1;
      ticket_.store((gen << 16) | std::uint64_t(helpers), std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) wake_cv_.notify_all();
    work();
    // Return once every task is done, not once every helper has checked in: a helper the OS has not
    // scheduled yet (the other cores busy) would otherwise cost the caller its wake-up latency, hundreds
    // of microseconds, on every call. Such a helper finds nothing left to claim; the next job waits for
    // it (wait_for_helpers) before it rewrites the job's fields.
    for (int spins = 0; done_.load(std::memory_order_acquire) != ntasks; ++spins) {
      if (spins < 4096) cpu_relax(); else std::this_thread::yield();
    }
  }

 private:
  ThreadPool() : pid_(current_pid()) {}

  static std::atomic<ThreadPool*>& slot() {
    static std::atomic<ThreadPool*> current{nullptr};
    return current;
  }

  // Joins the workers beyond the first `keep` (called with the pool idle: every worker is spinning
  // or asleep between jobs). A job with no helpers wakes them; those past the limit exit.
  void retire_above(int keep) {
    wait_for_helpers();
    if (keep < 0) keep = 0;
    if (int(workers_.size()) <= keep) return;
    limit_.store(keep, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(wake_mu_);
      const std::uint64_t gen = (ticket_.load(std::memory_order_relaxed) >> 16) + 1;
      ticket_.store(gen << 16, std::memory_order_release);
    }
    wake_cv_.notify_all();
    while (int(workers_.size()) > keep) {
      workers_.back().join();
      workers_.pop_back();
      live_.fetch_sub(1, std::memory_order_acq_rel);
    }
    limit_.store(kMaxWorkers, std::memory_order_relaxed);
    idle_jobs_ = 0;
    idle_max_ = 0;
  }

  // Makes sure `want` workers exist (fewer if thread creation fails); returns how many do.
  int grow(int want) {
    if (want > kMaxWorkers) want = kMaxWorkers;
    while (int(workers_.size()) < want) {
      try {
        // The worker starts from the current ticket, so it cannot miss the job about to be posted.
        workers_.emplace_back(&ThreadPool::worker_loop, this, int(workers_.size()),
                              ticket_.load(std::memory_order_relaxed));
        live_.fetch_add(1, std::memory_order_acq_rel);
      } catch (...) {
        break;
      }
    }
    return want < int(workers_.size()) ? want : int(workers_.size());
  }

  void work() {
    for (;;) {
      const std::int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= ntasks_) return;
      fn_(ctx_, i);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  // The helpers of the previous job have all left work() (they found its tasks taken or did them).
  void wait_for_helpers() {
    for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
      if (spins < 4096) cpu_relax(); else std::this_thread::yield();
    }
  }

  void worker_loop(int index, std::uint64_t seen) {
    for (;;) {
      // Spin for up to spin_us() waiting for the next job, then sleep.
      const auto spin = std::chrono::microseconds(spin_us());
      auto start = std::chrono::steady_clock::now();
      for (int spins = 1; ticket_.load(std::memory_order_acquire) == seen; ++spins) {
        cpu_relax();
        if ((spins & 255) == 0 && std::chrono::steady_clock::now() - start >= spin) {
          std::unique_lock<std::mutex> lk(wake_mu_);
          sleepers_.fetch_add(1, std::memory_order_acq_rel);
          wake_cv_.wait(lk, [&] { return ticket_.load(std::memory_order_acquire) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_acq_rel);
          break;
        }
      }
      // A ticket is (generation << 16 | number of helpers wanted); read once, so it is consistent.
      seen = ticket_.load(std::memory_order_acquire);
      if (index >= limit_.load(std::memory_order_relaxed)) return;  // retired
      if (std::uint64_t(index) >= (seen & 0xffffu)) continue;      // not needed for this job
      work();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const long pid_;
  std::mutex dispatch_mu_;  // held by the caller for the whole job
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  std::atomic<std::uint64_t> ticket_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> limit_{kMaxWorkers};  // workers at this index or above exit when they wake
  std::atomic<int> live_{0};
  static constexpr int kRetireAfter = 16;
  int idle_jobs_ = 0, idle_max_ = 0;  // jobs in a row that left workers unused, most helpers among them  // helpers still working on the current job
  std::atomic<std::int64_t> next_{0};
  std::atomic<std::int64_t> done_{0};  // tasks of the current job finished
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::int64_t ntasks_ = 0;
  std::vector<std::thread> workers_;
};

// torch's OpenMP runtime, borrowed (see the top of this file).
class OpenMpRuntime {
 public:
  using TaskFn = ThreadPool::TaskFn;
  static OpenMpRuntime& get() {
    static OpenMpRuntime r;
    return r;
  }
  // Marks this process as a forked child (OpenMP unusable): the pthread_atfork handler registered when this object
  // is built (at the extension's import) does it for children of a process that had imported the extension; the
  // package's os.register_at_fork hook calls it for a child whose parent had not.
  static void mark_forked_child() { forked().store(true, std::memory_order_relaxed); }
  // Found in this process and not invalidated by a fork since.
  bool usable() const { return parallel_ != nullptr && !forked().load(std::memory_order_relaxed); }
  // Where it came from, or why it cannot be used.
  std::string describe() const {
    if (parallel_ == nullptr) return "no OpenMP runtime loaded by torch (" + std::string(missing_) + ")";
    if (forked().load(std::memory_order_relaxed)) return "forked child: OpenMP is not usable after fork()";
    return "GOMP_parallel of " + std::string(library_);
  }

  // Runs fn(ctx, i) for i in [0, ntasks) on a team of up to nthreads threads; an exception thrown by a task is
  // rethrown here after the team has finished (none may leave an OpenMP region).
  void run(int nthreads, std::int64_t ntasks, TaskFn fn, void* ctx) const {
    Job job{fn, ctx, ntasks};
    const std::int64_t team = std::min<std::int64_t>(nthreads, ntasks);
    parallel_(&OpenMpRuntime::body, &job, unsigned(team), 0);
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  using ParallelFn = void (*)(void (*)(void*), void*, unsigned, unsigned);
  struct Job {
    TaskFn fn;
    void* ctx;
    std::int64_t ntasks;
    std::atomic<std::int64_t> next{0};
    std::atomic<bool> failed{false};
    std::exception_ptr error;  // written once, by the task that set `failed`; read after the team's barrier
  };

  static void body(void* p) {
    Job& job = *static_cast<Job*>(p);
    for (;;) {
      const std::int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
      if (i >= job.ntasks) return;
      if (job.failed.load(std::memory_order_relaxed)) continue;
      try {
        job.fn(job.ctx, i);
      } catch (...) {
        if (!job.failed.exchange(true)) job.error = std::current_exception();
      }
    }
  }

  static std::atomic<bool>& forked() {
    static std::atomic<bool> f{false};
    return f;
  }

  OpenMpRuntime() {
#if defined(SSM_HAVE_DLFCN)
    // libtorch_cpu's own dependency, whatever its file name (torch wheels bundle libgomp under a hashed name):
    // dlsym on a handle searches the library and the libraries it needs.
    for (const char* lib : {"libtorch_cpu.so", "libtorch_cpu.dylib"}) {
      void* handle = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD);
      if (handle == nullptr) continue;
      void* sym = dlsym(handle, "GOMP_parallel");
      if (sym == nullptr) {
        missing_ = "libtorch_cpu exports no GOMP_parallel";
        continue;  // the handle stays open: libtorch_cpu is never unloaded anyway
      }
      parallel_ = reinterpret_cast<ParallelFn>(sym);
      Dl_info info;
      library_ = dladdr(sym, &info) != 0 && info.dli_fname != nullptr ? info.dli_fname : lib;
      break;
    }
    if (parallel_ != nullptr)
      pthread_atfork(nullptr, nullptr, [] { mark_forked_child(); });
#else
    missing_ = "no dlopen on this platform";
#endif
  }

  ParallelFn parallel_ = nullptr;
  const char* library_ = "";
  const char* missing_ = "libtorch_cpu is not loaded";
};

// Whether the pool was asked for: STABLESOFTMAX_CPU_THREADS=pool (read once; auto, openmp or anything else: no),
// changed at run time by set_thread_runtime(). Otherwise parallel_for takes torch's OpenMP runtime where usable.
inline std::atomic<bool>& pool_asked_for() {
  static std::atomic<bool> asked{[] {
    const char* v = std::getenv("STABLESOFTMAX_CPU_THREADS");
    return v != nullptr && std::strcmp(v, "pool") == 0;
  }()};
  return asked;
}

// True when parallel_for runs on torch's OpenMP threads now.
inline bool uses_openmp() { return !pool_asked_for().load(std::memory_order_relaxed) && OpenMpRuntime::get().usable(); }

// The runtime in use and why, e.g. {"openmp", "GOMP_parallel of /.../libgomp.so.1"}.
inline std::pair<std::string, std::string> thread_runtime() {
  if (pool_asked_for().load(std::memory_order_relaxed))
    return {"pool", "asked for (STABLESOFTMAX_CPU_THREADS or set_thread_runtime)"};
  const OpenMpRuntime& omp = OpenMpRuntime::get();
  return {omp.usable() ? "openmp" : "pool", omp.describe()};
}

// "auto" or "openmp" (the same, but std::invalid_argument when OpenMP cannot be used here) or "pool".
inline void set_thread_runtime(const std::string& name) {
  if (name == "openmp" && !OpenMpRuntime::get().usable())
    throw std::invalid_argument("openmp: " + OpenMpRuntime::get().describe());
  if (name != "auto" && name != "openmp" && name != "pool")
    throw std::invalid_argument("thread runtime must be 'auto', 'openmp' or 'pool', got '" + name + "'");
  pool_asked_for().store(name == "pool");
}

// Runs f(i) for i in [0, ntasks) on up to nthreads threads (inline when that is 1).
template <class F>
void parallel_for(int nthreads, std::int64_t ntasks, F&& f) {
  if (nthreads <= 1 || ntasks <= 1) {
    for (std::int64_t i = 0; i < ntasks; ++i) f(i);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  const ThreadPool::TaskFn task = [](void* ctx, std::int64_t i) { (*static_cast<Fn*>(ctx))(i); };
  void* ctx = const_cast<void*>(static_cast<const void*>(&f));
  if (uses_openmp()) OpenMpRuntime::get().run(nthreads, ntasks, task, ctx);
  else ThreadPool::get().run(nthreads, ntasks, task, ctx);
}

}  // namespace ssm
