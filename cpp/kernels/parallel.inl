// Work splitting shared by every algorithm (included inside fusedopt::<isa>::(anonymous)).
//
// One parallel region per call, whatever the number of tensors: the concatenation of all tensors
// is cut into `threads` nearly equal element ranges; each cut is moved down to a multiple of 64
// bytes *within its tensor*, so threads never share a cache line of a tensor. Every element is
// computed by the same sequence of IEEE operations whichever thread, SIMD lane or scalar tail
// handles it (kernels are compiled with -ffp-contract=off), so results are bitwise independent
// of the thread count and of how tensors are grouped into calls.

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

struct Cut {
  int64_t tensor;  // index of the tensor the cut falls in (== count for the end)
  int64_t offset;  // element offset inside that tensor
};

// Position of the i-th of `parts` cuts of the concatenated tensors (cut 0 = start, cut parts = end).
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
      return Cut{k, local - local % align};
    }
    acc += n;
  }
  return Cut{list.count, 0};
}

// Calls span(k, begin, end) for disjoint element ranges covering every tensor once.
template <class T, class Span>
void for_each_span(const TensorList& list, int threads, const Span& span) {
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1) {
    int64_t total = 0;
    for (int64_t k = 0; k < list.count; ++k) total += list.sizes[k];
    if (total == 0) return;
    constexpr int64_t kAlign = 64 / static_cast<int64_t>(sizeof(T));
#pragma omp parallel num_threads(threads)
    {
      const int64_t parts = omp_get_num_threads();
      const int64_t me = omp_get_thread_num();
      const Cut lo = cut_at(list, total, parts, me, kAlign);
      const Cut hi = cut_at(list, total, parts, me + 1, kAlign);
      for (int64_t k = lo.tensor; k < list.count && k <= hi.tensor; ++k) {
        const int64_t begin = (k == lo.tensor) ? lo.offset : 0;
        const int64_t end = (k == hi.tensor) ? hi.offset : list.sizes[k];
        if (end > begin) span(k, begin, end);
      }
    }
    return;
  }
#else
  (void)threads;
#endif
  for (int64_t k = 0; k < list.count; ++k) {
    if (list.sizes[k] > 0) span(k, int64_t{0}, list.sizes[k]);
  }
}
