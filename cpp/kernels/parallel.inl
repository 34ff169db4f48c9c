// Work splitting shared by every algorithm (included inside fusedopt::<isa>::(anonymous)).
//
// One parallel region per call, whatever the number of tensors: the concatenation of all tensors
// is cut into `threads` nearly equal element ranges; each cut is moved down to a 64-byte boundary
// of the tensor's first buffer (the parameter, or the written average of EMA), so threads never
// share a cache line of it. Each range of a tensor is then run as a short head up to that
// buffer's next 64-byte boundary and the aligned rest, so the vector loop's loads and stores of
// the parameter never straddle two cache lines, and neither do those of any other buffer with the
// same address modulo 64 (the optimizer classes place state arrays so). Measured on a 196-tensor
// transformer list of 16-byte-aligned heap arrays: 230 us -> 165 us a step (AVX-512).
//
// Every element is computed by the same sequence of IEEE operations whichever thread, SIMD lane,
// head or scalar tail handles it (kernels are compiled with -ffp-contract=off), so results are
// bitwise independent of the thread count, of alignment and of how tensors are grouped into calls.

// A span function: runs one algorithm over elements [begin, end) of tensor k of `list`, with the
// per-step values behind `ctx` (engine.inl makes one per algorithm variant). The driver below is
// a plain function, compiled once per ISA whatever the number of algorithms: it only decides
// which thread runs which range. noexcept: a parallel region then needs no unwinding cleanup
// (no EH personality, hence no weak DW.ref symbol, in the per-ISA objects: tests/test_build.py).
using SpanFn = void (*)(const void* ctx, const TensorList& list, int64_t k, int64_t begin, int64_t end) noexcept;

// Elements from `begin` to the next 64-byte boundary of buffer 0 of tensor k (0 when it is on one,
// or when the address is not even a multiple of the element size, which the bindings refuse).
// `size`: bytes per element of buffer 0.
inline int64_t to_boundary(const TensorList& list, int64_t k, int64_t begin, int64_t size) {
  const auto addr = reinterpret_cast<std::uintptr_t>(list.ptrs[k * list.nbuf]) + static_cast<std::uintptr_t>(begin * size);
  const auto mis = static_cast<int64_t>(addr % 64);
  if (mis == 0 || mis % size != 0) return 0;
  return (64 - mis) / size;
}

// fn(k, begin, end) as a head up to buffer 0's next 64-byte boundary, then the aligned rest.
inline void aligned_span(const TensorList& list, int64_t k, int64_t begin, int64_t end, int64_t size, SpanFn fn,
                         const void* ctx) {
  int64_t head = to_boundary(list, k, begin, size);
  if (head > end - begin) head = end - begin;
  if (head > 0) fn(ctx, list, k, begin, begin + head);
  if (end > begin + head) fn(ctx, list, k, begin + head, end);
}

struct Cut {
  int64_t tensor;  // index of the tensor the cut falls in (== count for the end)
  int64_t offset;  // element offset inside that tensor
};

// Position of the i-th of `parts` cuts of the concatenated tensors (cut 0 = start, cut parts = end),
// moved down to a 64-byte boundary of the tensor's buffer 0 (64/size elements apart), or with
// `block` > 0 to a multiple of `block` elements from the tensor's start.
inline Cut cut_at(const TensorList& list, int64_t total, int64_t parts, int64_t i, int64_t size, int64_t block) {
  const int64_t align = 64 / size;
  if (i <= 0) return Cut{0, 0};
  if (i >= parts) return Cut{list.count, 0};
  const int64_t q = total / parts, r = total % parts;
  const int64_t raw = q * i + (i < r ? i : r);
  int64_t acc = 0;
  for (int64_t k = 0; k < list.count; ++k) {
    const int64_t n = list.sizes[k];
    if (raw < acc + n) {
      const int64_t local = raw - acc;
      if (block > 0) return Cut{k, local / block * block};
      const int64_t phase = to_boundary(list, k, 0, size);  // first boundary, elements from the start
      return Cut{k, local < phase ? 0 : phase + (local - phase) / align * align};
    }
    acc += n;
  }
  return Cut{list.count, 0};
}

// Every thread of a parallel region runs with the floating-point control state of the thread that
// called the kernel (flush-to-zero, denormals-are-zero, rounding; runtime.hpp), then gets its own
// back. OpenMP workers otherwise keep the state they were created with, and a step's result would
// depend on which thread computed an element after e.g. torch.set_flush_denormal(). The caller
// itself (thread 0) already has it: reading and comparing costs a few cycles, no write.
class CallerFpControl {
 public:
  explicit CallerFpControl(std::uint64_t caller) : own_(runtime::fp_control()), changed_(own_ != caller) {
    if (changed_) runtime::set_fp_control(caller);
  }
  ~CallerFpControl() {
    if (changed_) runtime::set_fp_control(own_);
  }
  CallerFpControl(const CallerFpControl&) = delete;
  CallerFpControl& operator=(const CallerFpControl&) = delete;

 private:
  std::uint64_t own_;
  bool changed_;
};

// Calls fn(ctx, list, k, begin, end) for disjoint element ranges covering every tensor once
// (`size`: bytes per element of buffer 0, which the cuts align to). With `block` > 0 every range
// starts at a multiple of `block` elements of its tensor (8-bit states: whole quantization blocks
// per thread) and is not split further. Serial in a process forked after fusedopt had started an
// OpenMP team (runtime::region_threads).
void for_each_span(const TensorList& list, int threads, int64_t size, SpanFn fn, const void* ctx, int64_t block = 0) {
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1) {
    int64_t total = 0;
    for (int64_t k = 0; k < list.count; ++k) total += list.sizes[k];
    if (total == 0) return;
    threads = runtime::region_threads(threads);
    if (threads > 1) {
      const std::uint64_t fp = runtime::fp_control();
#pragma omp parallel num_threads(threads)
      {
        const CallerFpControl fp_scope(fp);
        const int64_t parts = omp_get_num_threads();
        const int64_t me = omp_get_thread_num();
        const Cut lo = cut_at(list, total, parts, me, size, block);
        const Cut hi = cut_at(list, total, parts, me + 1, size, block);
        for (int64_t k = lo.tensor; k < list.count && k <= hi.tensor; ++k) {
          const int64_t begin = (k == lo.tensor) ? lo.offset : 0;
          const int64_t end = (k == hi.tensor) ? hi.offset : list.sizes[k];
          if (end <= begin) continue;
          if (block > 0) {
            fn(ctx, list, k, begin, end);
          } else {
            aligned_span(list, k, begin, end, size, fn, ctx);
          }
        }
      }
      return;
    }
  }
#else
  (void)threads;
#endif
  for (int64_t k = 0; k < list.count; ++k) {
    if (list.sizes[k] <= 0) continue;
    if (block > 0) {
      fn(ctx, list, k, int64_t{0}, list.sizes[k]);
    } else {
      aligned_span(list, k, int64_t{0}, list.sizes[k], size, fn, ctx);
    }
  }
}
