// The two-phase driver of trust-ratio algorithms (LAMB, LARS), included inside
// fusedopt::<isa>::(anonymous) after engine.inl and norm.inl. Spec: python/fusedopt/reference.py
// (_tensor_sumsq and the algorithms' reference functions). SEMANTICS-ALGORITHMS.md §7.1.
//
// A trust-ratio algorithm A is an engine.inl algorithm (Scalars, kRoles, kGrad, Coef<C>) whose
// update needs two per-tensor norms, ||p|| and ||u|| (u: its update direction), before it can be
// applied. Instead of element(), it has
//   template <class C, class E> static C direction(const Coef<C>&, const E& e, int64_t i);
//       phase 1 for element i: u, computed from the pre-step state (it may store states whose new
//       value phase 2 needs; it never writes the parameter);
//   static double tensor_scalar(const Scalars&, double sumsq_p, double sumsq_u);
//       the tensor's phase-2 scalar from the two float64 sums of squares (float64, cast once);
//   template <class C, class E> static void apply(const Coef<C>&, const E& e, int64_t i, C x);
//       phase 2 for element i with the tensor's scalar x: recomputes what it needs of phase 1 with
//       the same operations (bit-identical) and writes the parameter and states.
//
// All in one call, bitwise independent of the ISA and the thread count:
//  * blocks: tensor k is cut into blocks of kNormBlock elements from its first element (as
//    norm.inl); blocks are numbered globally in tensor order. Phase 1 computes, per block, the
//    float64 sums of p^2 and u^2 over kNormLanes interleaved lanes combined by norm.inl's fixed
//    tree, into scratch[2b], scratch[2b+1] (each block by exactly one thread);
//  * per tensor: a pairwise tree (tree_sum) over its own blocks' sums in index order, then
//    A::tensor_scalar, into scratch[2K + k];
//  * phase 2 over the same blocks. Threads only decide which blocks they compute; with OpenMP,
//    one parallel region and two barriers.

template <class A, class C, class Roles, bool Pre>
struct Trust {
  // Phase 1 over elements [off, off + n) of tensor k (one block): out[0] = sum p^2, out[1] = sum u^2.
  static void phase1(const Args<A, C>& args, const TensorList& list, int64_t k, int64_t off, int64_t n,
                     double* out) noexcept {
    const typename A::template Coef<C> coef = args.coef;
    const Element<C, Pre, Roles> el{Roles(list.ptrs + k * list.nbuf, list.nbuf, off), args.gc};
    double sp[kNormLanes], su[kNormLanes];
    for (int j = 0; j < kNormLanes; ++j) sp[j] = 0.0, su[j] = 0.0;
    int64_t i = 0;
    for (; i + kNormLanes <= n; i += kNormLanes) {
#pragma omp simd
      for (int j = 0; j < kNormLanes; ++j) {
        const double p = static_cast<double>(el.load(Role<0>{}, i + j));
        const double u = static_cast<double>(A::direction(coef, el, i + j));
        sp[j] += p * p;
        su[j] += u * u;
      }
    }
    for (int j = 0; i + j < n; ++j) {
      const double p = static_cast<double>(el.load(Role<0>{}, i + j));
      const double u = static_cast<double>(A::direction(coef, el, i + j));
      sp[j] += p * p;
      su[j] += u * u;
    }
    out[0] = ((sp[0] + sp[1]) + (sp[2] + sp[3])) + ((sp[4] + sp[5]) + (sp[6] + sp[7]));
    out[1] = ((su[0] + su[1]) + (su[2] + su[3])) + ((su[4] + su[5]) + (su[6] + su[7]));
  }

  static void phase2(const Args<A, C>& args, const TensorList& list, int64_t k, int64_t off, int64_t n,
                     C x) noexcept {
    const typename A::template Coef<C> coef = args.coef;
    const Element<C, Pre, Roles> el{Roles(list.ptrs + k * list.nbuf, list.nbuf, off), args.gc};
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) A::apply(coef, el, i, x);
  }

  // Blocks [lo, hi) of the global numbering: phase 1 (x == nullptr) or phase 2 with the tensors'
  // scalars x.
  static void blocks(const Args<A, C>& args, const TensorList& list, int64_t lo, int64_t hi, double* part,
                     const double* x) noexcept {
    int64_t k = 0, first = 0;  // tensor k owns global blocks [first, first + blocks_of(size k))
    for (int64_t b = lo; b < hi; ++b) {
      while (b >= first + blocks_of(list.sizes[k])) {
        first += blocks_of(list.sizes[k]);
        ++k;
      }
      const int64_t off = (b - first) * kNormBlock;
      const int64_t rest = list.sizes[k] - off;
      const int64_t n = rest < kNormBlock ? rest : kNormBlock;
      if (x == nullptr) {
        phase1(args, list, k, off, n, part + 2 * b);
      } else {
        phase2(args, list, k, off, n, static_cast<C>(x[k]));
      }
    }
  }

  // The scalars of tensors k = me, me + parts, ... (tree sums of their blocks' partials).
  static void scalars(const typename A::Scalars& s, const TensorList& list, const double* part, double* x,
                      int64_t me, int64_t parts) noexcept {
    int64_t first = 0;
    for (int64_t k = 0; k < list.count; ++k) {
      const int64_t nb = blocks_of(list.sizes[k]);
      if (k % parts == me) {
        double p[2] = {0.0, 0.0};
        for (int r = 0; r < 2; ++r) p[r] = tree_sum2(part + 2 * first + r, nb);
        x[k] = A::tensor_scalar(s, p[0], p[1]);
      }
      first += nb;
    }
  }

  // tree_sum (norm.inl) over every other double (the interleaved partials).
  static double tree_sum2(const double* p, int64_t n) noexcept {
    if (n <= 0) return 0.0;
    if (n == 1) return p[0];
    const int64_t half = n / 2;
    return tree_sum2(p, half) + tree_sum2(p + 2 * half, n - half);
  }
};

// One trust-ratio step of A over float32 or float64 arrays; s.scratch holds 2*K + count doubles
// (K: the blocks of all tensors). s.split.phase 1 or 2: only that phase (step_args.hpp, TrustSplit).
template <class A, class T, bool Pre>
void trust_run(const TensorList& list, const typename A::Scalars& s, const Args<A, T>& args, int threads) {
  using Roles = typename Uniform<Plain<T>, A::kRoles>::type;
  using R = Trust<A, T, Roles, Pre>;
  int64_t nblocks = 0;
  for (int64_t k = 0; k < list.count; ++k) nblocks += blocks_of(list.sizes[k]);
  if (nblocks == 0) return;
  const int phase = s.split.phase;
  double* part = s.scratch;
  double* x = s.scratch + 2 * nblocks;
  if (phase == 2) {
    for (int64_t k = 0; k < list.count; ++k) x[k] = A::tensor_scalar(s, s.split.totals[2 * k], s.split.totals[2 * k + 1]);
  }
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1 && nblocks > 1) threads = runtime::region_threads(threads);  // 1 after fork()
  if (threads > 1 && nblocks > 1) {
    const std::uint64_t fp = runtime::fp_control();
#pragma omp parallel num_threads(threads)
    {
      const CallerFpControl fp_scope(fp);  // parallel.inl
      const int64_t parts = omp_get_num_threads();
      const int64_t me = omp_get_thread_num();
      const int64_t lo = nblocks * me / parts, hi = nblocks * (me + 1) / parts;
      if (phase != 2) R::blocks(args, list, lo, hi, part, nullptr);
      if (phase == 0) {  // (phase is the same in every thread: all or none meet the barriers)
#pragma omp barrier
        R::scalars(s, list, part, x, me, parts);
#pragma omp barrier
      }
      if (phase != 1) R::blocks(args, list, lo, hi, part, x);
    }
    return;
  }
#else
  (void)threads;
#endif
  if (phase != 2) R::blocks(args, list, 0, nblocks, part, nullptr);
  if (phase == 0) R::scalars(s, list, part, x, 0, 1);
  if (phase != 1) R::blocks(args, list, 0, nblocks, part, x);
}

template <class A, class T>
void trust_step(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, int threads) {
  const Args<A, T> args{typename A::template Coef<T>(s), grad_coef<T>(gs)};
  if constexpr (A::kGrad) {
    if (gs.active) {
      trust_run<A, T, true>(list, s, args, threads);
      return;
    }
  }
  trust_run<A, T, false>(list, s, args, threads);
}
