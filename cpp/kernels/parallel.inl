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

// Own tiny tag types rather than std::integral_constant: nothing from the standard library gets
// instantiated (and possibly emitted as a weak, ISA-flavoured symbol) in this translation unit.
template <bool B>
struct Bool {
  static constexpr bool value = B;
};

template <int I>
struct Int {
  static constexpr int value = I;
};

// Turn a runtime flag into a compile-time one: f(Bool<true>{}) or f(Bool<false>{}).
template <class F>
inline void with_flag(bool flag, F&& f) {
  if (flag) {
    f(Bool<true>{});
  } else {
    f(Bool<false>{});
  }
}

template <class F>
inline void with_weight_decay_mode(int mode, F&& f) {
  switch (mode) {
    case kL2:
      f(Int<kL2>{});
      break;
    case kDecoupled:
      f(Int<kDecoupled>{});
      break;
    default:
      f(Int<kNoDecay>{});
      break;
  }
}

// Buffer r of tensor k, offset by `begin` elements (nullptr stays nullptr).
template <class T>
inline T* buffer(const TensorList& list, int64_t k, int r, int64_t begin) {
  void* base = list.ptrs[k * list.nbuf + r];
  return base == nullptr ? nullptr : static_cast<T*>(base) + begin;
}

// Elements from `begin` to the next 64-byte boundary of buffer 0 of tensor k (0 when it is on one,
// or when the address is not even a multiple of the element size, which the bindings refuse).
template <class T>
inline int64_t to_boundary(const TensorList& list, int64_t k, int64_t begin) {
  const auto addr = reinterpret_cast<std::uintptr_t>(buffer<T>(list, k, 0, begin));
  const auto mis = static_cast<int64_t>(addr % 64);
  if (mis == 0 || mis % static_cast<int64_t>(sizeof(T)) != 0) return 0;
  return (64 - mis) / static_cast<int64_t>(sizeof(T));
}

// span(k, begin, end) as a head up to buffer 0's next 64-byte boundary, then the aligned rest.
template <class T, class Span>
inline void aligned_span(const TensorList& list, int64_t k, int64_t begin, int64_t end, const Span& span) {
  int64_t head = to_boundary<T>(list, k, begin);
  if (head > end - begin) head = end - begin;
  if (head > 0) span(k, begin, begin + head);
  if (end > begin + head) span(k, begin + head, end);
}

struct Cut {
  int64_t tensor;  // index of the tensor the cut falls in (== count for the end)
  int64_t offset;  // element offset inside that tensor
};

// Position of the i-th of `parts` cuts of the concatenated tensors (cut 0 = start, cut parts = end),
// moved down to a 64-byte boundary of the tensor's buffer 0 (`align` elements apart).
template <class T>
inline Cut cut_at(const TensorList& list, int64_t total, int64_t parts, int64_t i, int64_t align) {
  if (i <= 0) return Cut{0, 0};
  if (i >= parts) return Cut{list.count, 0};
  const int64_t q = total / parts, r = total % parts;
  const int64_t raw = q * i + (i < r ? i : r);
  int64_t acc = 0;
  for (int64_t k = 0; k < list.count; ++k) {
    const int64_t n = list.sizes[k];
    if (raw < acc + n) {
      const int64_t local = raw - acc;
      const int64_t phase = to_boundary<T>(list, k, 0);  // first boundary, elements from the start
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

// Calls span(k, begin, end) for disjoint element ranges covering every tensor once. Serial in a
// process forked after fusedopt had started an OpenMP team (runtime::region_threads).
template <class T, class Span>
void for_each_span(const TensorList& list, int threads, const Span& span) {
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1) {
    int64_t total = 0;
    for (int64_t k = 0; k < list.count; ++k) total += list.sizes[k];
    if (total == 0) return;
    threads = runtime::region_threads(threads);
    if (threads > 1) {
      constexpr int64_t kAlign = 64 / static_cast<int64_t>(sizeof(T));
      const std::uint64_t fp = runtime::fp_control();
#pragma omp parallel num_threads(threads)
      {
        const CallerFpControl fp_scope(fp);
        const int64_t parts = omp_get_num_threads();
        const int64_t me = omp_get_thread_num();
        const Cut lo = cut_at<T>(list, total, parts, me, kAlign);
        const Cut hi = cut_at<T>(list, total, parts, me + 1, kAlign);
        for (int64_t k = lo.tensor; k < list.count && k <= hi.tensor; ++k) {
          const int64_t begin = (k == lo.tensor) ? lo.offset : 0;
          const int64_t end = (k == hi.tensor) ? hi.offset : list.sizes[k];
          if (end > begin) aligned_span<T>(list, k, begin, end, span);
        }
      }
      return;
    }
  }
#else
  (void)threads;
#endif
  for (int64_t k = 0; k < list.count; ++k) {
    if (list.sizes[k] > 0) aligned_span<T>(list, k, int64_t{0}, list.sizes[k], span);
  }
}
