// Deterministic sum of squares over a list of tensors (the global gradient norm). Spec:
// python/fusedopt/reference.py::sum_of_squares. Bitwise the same result for every ISA and thread
// count, because no floating-point operation depends on either:
//  * blocks: tensor k is cut into blocks of kNormBlock elements starting at its first element;
//    blocks get global indices in tensor order (empty tensors have none);
//  * inside a block: lane j (0..7) accumulates x[i]^2 in float64 for i = j, j+8, j+16, ... in
//    increasing order (float32 squares are exact in float64); the lanes are combined as
//    ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)). The lane loop vectorizes without reassociation;
//  * across blocks: a pairwise tree, sum(lo, hi) = sum(lo, mid) + sum(mid, hi), mid = lo+(hi-lo)/2.
// Threads only decide which blocks they compute; each block's sum lands in partials[block].

template <class T>
double block_sumsq(const T* FUSEDOPT_RESTRICT x, int64_t n) {
  double acc[kNormLanes];
  for (int j = 0; j < kNormLanes; ++j) acc[j] = 0.0;
  int64_t i = 0;
  for (; i + kNormLanes <= n; i += kNormLanes) {
#pragma omp simd
    for (int j = 0; j < kNormLanes; ++j) {
      const double v = static_cast<double>(x[i + j]);
      acc[j] += v * v;
    }
  }
  for (int j = 0; i + j < n; ++j) {
    const double v = static_cast<double>(x[i + j]);
    acc[j] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

inline double tree_sum(const double* p, int64_t n) {
  if (n <= 0) return 0.0;
  if (n == 1) return p[0];
  const int64_t half = n / 2;
  return tree_sum(p, half) + tree_sum(p + half, n - half);
}

inline int64_t blocks_of(int64_t n) { return (n + kNormBlock - 1) / kNormBlock; }

// Sums blocks [lo, hi) of the global block numbering into partials.
template <class T>
void sumsq_blocks(const TensorList& list, double* partials, int64_t lo, int64_t hi) {
  int64_t k = 0, first = 0;  // tensor k owns global blocks [first, first + blocks_of(size k))
  for (int64_t b = lo; b < hi; ++b) {
    while (b >= first + blocks_of(list.sizes[k])) {
      first += blocks_of(list.sizes[k]);
      ++k;
    }
    const int64_t offset = (b - first) * kNormBlock;
    const int64_t rest = list.sizes[k] - offset;
    const T* x = static_cast<const T*>(list.ptrs[k * list.nbuf]) + offset;
    partials[b] = block_sumsq<T>(x, rest < kNormBlock ? rest : kNormBlock);
  }
}

template <class T>
double sumsq(const TensorList& list, double* partials, int threads) {
  int64_t nblocks = 0;
  for (int64_t k = 0; k < list.count; ++k) nblocks += blocks_of(list.sizes[k]);
  if (nblocks == 0) return 0.0;
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1 && nblocks > 1) threads = runtime::region_threads(threads);  // 1 after fork()
  if (threads > 1 && nblocks > 1) {
    const std::uint64_t fp = runtime::fp_control();
#pragma omp parallel num_threads(threads)
    {
      const CallerFpControl fp_scope(fp);  // parallel.inl
      const int64_t parts = omp_get_num_threads();
      const int64_t me = omp_get_thread_num();
      sumsq_blocks<T>(list, partials, nblocks * me / parts, nblocks * (me + 1) / parts);
    }
    return tree_sum(partials, nblocks);
  }
#else
  (void)threads;
#endif
  sumsq_blocks<T>(list, partials, 0, nblocks);
  return tree_sum(partials, nblocks);
}
