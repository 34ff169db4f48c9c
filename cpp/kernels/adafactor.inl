// Adafactor (torch.optim.Adafactor, torch 2.13, the loop form `_single_tensor_adafactor`; the CPU
// default). Spec: python/fusedopt/reference.py::adafactor (bitwise). SEMANTICS-ALGORITHMS.md §4, §9.
// Included inside fusedopt::<isa>::(anonymous) after norm.inl and torch_exact.inl (fma32).
//
// Per tensor (g = -grad with maximize; every T operation rounds to the array dtype T):
//   alpha = max(eps2, fl(||p||)/n**0.5) * rho          float64; p before the decay
//   factored (>= 2 dims, viewed as [B, R, C]):
//     R[b,r] = lerp(R[b,r], fl(r*r)/C, w)   r = fl(sqrt(sum_c g^2))  (torch.norm(g, dim=-1)^2/C)
//     C[b,c] = lerp(C[b,c], fl(k*k)/R, w)   k = fl(sqrt(sum_r g^2))  (torch.norm(g, dim=-2)^2/R)
//     m[b]   = max(fl(sum_r R[b,r] / R), eps1)          (sum in float64, in r order)
//     u      = 1/sqrt(max(fl(R[b,r]*C[b,c])/m[b], eps1^2)) * g
//   unfactored (<= 1 dim): V = lerp(V, g*g, w) (stored);  u = 1/sqrt(max(V, eps1^2)) * g
//   den = max(1, fl(||u||)/(n**0.5*d))                  float64
//   p = fma(u, fl(-alpha/den), p*decay)                 (decay only when weight_decay != 0)
// lerp(s, e, w) = fma(w, e-s, s) if |w| < 0.5 else fma(w-1, e-s, e) (torch's); fma is the
// correctly rounded float32 fma (fma_rn below), a*b + c for float64. fl(||x||) is the float64
// sum of squares rounded to T after its sqrt (torch.norm returns a T value).
//
// Deterministic for every ISA and thread count: all sums are float64 in a fixed order fixed by the
// layout (bindings/adafactor.cpp), never by the threads:
//  * a segment (<= kAdafactorSeg contiguous elements: row r of batch b, column chunk q; or a run of
//    an unfactored tensor) sums x^2 as norm.inl's block_sumsq (kNormLanes interleaved lanes
//    combined as ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7))) into its scratch slot (sum p^2, then sum
//    u^2; sum g^2);
//  * a factored tile (tile_rows rows of batch b x chunk q) also sums g^2 per column over its rows
//    in row order into colpart[b][tile][c];
//  * per tensor: ||p||^2, ||u||^2 = sequential sums over its segments in order; row sums =
//    sequential over the row's chunks; column sums = sequential over the row tiles.
// Phases (one OpenMP region, four barriers): 1 tiles: sums of p^2, g^2 | 2 tensors: alpha, the
// factors' lerp, mean(R) | 3 tiles: u (storing V), sums of u^2 | 4 tensors: fl(-alpha/den) |
// 5 tiles: recompute u, update p. Threads only choose which tiles/tensors they compute.

// The correctly rounded float32 fma: the hardware instruction where the ISA has one (x86 AVX2 and
// AVX-512 objects are built with -mfma; AArch64 always has it), else fma32's exact emulation
// (torch_exact.inl), ~10x slower: the same value either way. float64: a*b + c (as fma32).
inline float fma_rn(float a, float b, float c) {
#if defined(__FMA__) || defined(__aarch64__)
  return __builtin_fmaf(a, b, c);
#else
  return fma32(a, b, c);
#endif
}
inline double fma_rn(double a, double b, double c) { return fma32(a, b, c); }

template <class T>
struct Adafactor {
  struct Coef {
    T wf, wm1, e1, e2, decay, sign;
    bool from_s, has_wd;
    double rho, eps2, d;
    explicit Coef(const AdafactorScalars& s)
        : wf(T(s.w)), wm1(wf - T(1)), e1(T(s.eps1)), e2(T(s.eps1_sq)), decay(T(s.decay)),
          sign(s.maximize ? T(-1) : T(1)), from_s(wf < T(0.5) && wf > T(-0.5)), has_wd(s.has_wd), rho(s.rho),
          eps2(s.eps2), d(s.d) {}
  };

  static T lerp(const Coef& c, T s, T e) { return fma_rn(c.from_s ? c.wf : c.wm1, e - s, choose(c.from_s, s, e)); }

  // u of a factored element: rv = R[b,r], cv = C[b,c], mc = max(mean(R[b]), eps1)
  static T u_factored(const Coef& c, T rv, T cv, T mc, T g) {
    T v = rv * cv;
    v = v / mc;
    v = v < c.e2 ? c.e2 : v;  // clamp_(min=eps1^2): NaN stays NaN
    return (T(1) / std::sqrt(v)) * g;
  }
  static T u_plain(const Coef& c, T var, T g) {
    const T v = var < c.e2 ? c.e2 : var;
    return (T(1) / std::sqrt(v)) * g;
  }

  static int64_t seg_len(int64_t n, int64_t s) {
    const int64_t rest = n - s * kAdafactorSeg;
    return rest < kAdafactorSeg ? rest : kAdafactorSeg;
  }

  // -- phase 1: sums of p^2 (and g^2 per segment and per column) -----------------------------------
  static void sums_factored(const AdafactorTensor& t, int64_t item, double* sc) {
    const int64_t per_batch = t.row_tiles * t.chunks;
    const int64_t b = item / per_batch, j = (item % per_batch) / t.chunks, q = item % t.chunks;
    const int64_t r0 = j * t.tile_rows, r1 = r0 + t.tile_rows < t.rows ? r0 + t.tile_rows : t.rows;
    const int64_t c0 = q * kAdafactorSeg, len = seg_len(t.cols, q);
    double* FUSEDOPT_RESTRICT cp = sc + t.colpart + (b * t.row_tiles + j) * t.cols + c0;
    for (int64_t i = 0; i < len; ++i) cp[i] = 0.0;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t off = (b * t.rows + r) * t.cols + c0;
      const T* FUSEDOPT_RESTRICT p = static_cast<const T*>(t.param) + off;
      const T* FUSEDOPT_RESTRICT g = static_cast<const T*>(t.grad) + off;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const double gv = static_cast<double>(g[i]);
        cp[i] += gv * gv;
      }
      double* slot = sc + t.seg + 2 * ((b * t.rows + r) * t.chunks + q);
      slot[0] = block_sumsq<T>(p, len);  // norm.inl: the lanes and their tree
      slot[1] = block_sumsq<T>(g, len);
    }
  }

  static void sums_plain(const AdafactorTensor& t, int64_t item, double* sc) {
    const int64_t per = kAdafactorTile / kAdafactorSeg;
    const int64_t s1 = (item + 1) * per < t.chunks ? (item + 1) * per : t.chunks;
    for (int64_t s = item * per; s < s1; ++s) {
      sc[t.seg + 2 * s] = block_sumsq<T>(static_cast<const T*>(t.param) + s * kAdafactorSeg, seg_len(t.size, s));
    }
  }

  // -- phase 2 (per tensor): alpha, the factors, max(mean(R), eps1) --------------------------------
  static int64_t segments(const AdafactorTensor& t) { return t.factored ? t.batch * t.rows * t.chunks : t.chunks; }

  static void factors(const Coef& c, const AdafactorTensor& t, double* sc) {
    double sum = 0.0;
    const int64_t nseg = segments(t);
    for (int64_t s = 0; s < nseg; ++s) sum += sc[t.seg + 2 * s];
    const double rms = static_cast<double>(static_cast<T>(std::sqrt(sum))) / std::pow(static_cast<double>(t.size), 0.5);
    sc[t.scal] = (rms > c.eps2 ? rms : c.eps2) * c.rho;  // Python's max(eps2, rms): NaN -> eps2
    if (!t.factored) return;
    T* FUSEDOPT_RESTRICT row = static_cast<T*>(t.row);
    T* FUSEDOPT_RESTRICT col = static_cast<T*>(t.col);
    const T fc = static_cast<T>(t.cols), fr = static_cast<T>(t.rows);
    for (int64_t b = 0; b < t.batch; ++b) {
      double acc = 0.0;
      for (int64_t r = 0; r < t.rows; ++r) {
        const double* slot = sc + t.seg + 2 * ((b * t.rows + r) * t.chunks) + 1;
        double rs = 0.0;
        for (int64_t q = 0; q < t.chunks; ++q) rs += slot[2 * q];
        const T rn = static_cast<T>(std::sqrt(rs));
        const T rm = (rn * rn) / fc;
        const T v = lerp(c, row[b * t.rows + r], rm);
        row[b * t.rows + r] = v;
        acc += static_cast<double>(v);
      }
      const T mean = static_cast<T>(acc / static_cast<double>(t.rows));
      sc[t.mean + b] = static_cast<double>(mean < c.e1 ? c.e1 : mean);  // clamp_(min=eps1)
      const double* cp = sc + t.colpart + b * t.row_tiles * t.cols;
      for (int64_t k = 0; k < t.cols; ++k) {
        double cs = 0.0;
        for (int64_t j = 0; j < t.row_tiles; ++j) cs += cp[j * t.cols + k];
        const T cn = static_cast<T>(std::sqrt(cs));
        const T cm = (cn * cn) / fr;
        col[b * t.cols + k] = lerp(c, col[b * t.cols + k], cm);
      }
    }
  }

  // -- phases 3 (sums of u^2, V stored) and 5 (update) ----------------------------------------------
  template <bool Apply>
  static void tile_factored(const Coef& c, const AdafactorTensor& t, int64_t item, double* sc) {
    const int64_t per_batch = t.row_tiles * t.chunks;
    const int64_t b = item / per_batch, j = (item % per_batch) / t.chunks, q = item % t.chunks;
    const int64_t r0 = j * t.tile_rows, r1 = r0 + t.tile_rows < t.rows ? r0 + t.tile_rows : t.rows;
    const int64_t c0 = q * kAdafactorSeg, len = seg_len(t.cols, q);
    const T mc = static_cast<T>(sc[t.mean + b]);
    const T* FUSEDOPT_RESTRICT cv = static_cast<const T*>(t.col) + b * t.cols + c0;
    const T x = static_cast<T>(sc[t.scal + 1]);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t off = (b * t.rows + r) * t.cols + c0;
      const T rv = static_cast<const T*>(t.row)[b * t.rows + r];
      const T* FUSEDOPT_RESTRICT g = static_cast<const T*>(t.grad) + off;
      T* FUSEDOPT_RESTRICT p = static_cast<T*>(t.param) + off;
      if constexpr (Apply) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const T u = u_factored(c, rv, cv[i], mc, c.sign * g[i]);
          const T pd = p[i] * c.decay;
          p[i] = fma_rn(u, x, c.has_wd ? pd : p[i]);
        }
      } else {
        T ub[kAdafactorSeg];
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) ub[i] = u_factored(c, rv, cv[i], mc, c.sign * g[i]);
        sc[t.seg + 2 * ((b * t.rows + r) * t.chunks + q)] = block_sumsq<T>(ub, len);
      }
    }
  }

  template <bool Apply>
  static void tile_plain(const Coef& c, const AdafactorTensor& t, int64_t item, double* sc) {
    const int64_t per = kAdafactorTile / kAdafactorSeg;
    const int64_t s1 = (item + 1) * per < t.chunks ? (item + 1) * per : t.chunks;
    const T x = static_cast<T>(sc[t.scal + 1]);
    for (int64_t s = item * per; s < s1; ++s) {
      const int64_t len = seg_len(t.size, s);
      const T* FUSEDOPT_RESTRICT g = static_cast<const T*>(t.grad) + s * kAdafactorSeg;
      T* FUSEDOPT_RESTRICT var = static_cast<T*>(t.row) + s * kAdafactorSeg;
      T* FUSEDOPT_RESTRICT p = static_cast<T*>(t.param) + s * kAdafactorSeg;
      if constexpr (Apply) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const T u = u_plain(c, var[i], c.sign * g[i]);
          const T pd = p[i] * c.decay;
          p[i] = fma_rn(u, x, c.has_wd ? pd : p[i]);
        }
      } else {
        T ub[kAdafactorSeg];
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) {
          const T gv = c.sign * g[i];
          const T v = lerp(c, var[i], gv * gv);
          var[i] = v;
          ub[i] = u_plain(c, v, gv);
        }
        sc[t.seg + 2 * s] = block_sumsq<T>(ub, len);
      }
    }
  }

  // -- phase 4 (per tensor): the update's scalar fl(-alpha/den) -------------------------------------
  static void clip(const Coef& c, const AdafactorTensor& t, double* sc) {
    double sum = 0.0;
    const int64_t nseg = segments(t);
    for (int64_t s = 0; s < nseg; ++s) sum += sc[t.seg + 2 * s];
    const double q = static_cast<double>(static_cast<T>(std::sqrt(sum))) /
                     (std::pow(static_cast<double>(t.size), 0.5) * c.d);
    const double den = q > 1.0 ? q : 1.0;  // Python's max(1.0, q): NaN -> 1
    sc[t.scal + 1] = static_cast<double>(static_cast<T>(-sc[t.scal] / den));
  }

  // Items [lo, hi) of the global numbering in phase `ph` (1, 3 or 5).
  static void items(const Coef& c, const AdafactorList& l, int64_t lo, int64_t hi, int ph) {
    int64_t k = 0, first = 0;
    for (int64_t it = lo; it < hi; ++it) {
      while (it >= first + l.t[k].items) first += l.t[k++].items;
      const AdafactorTensor& t = l.t[k];
      const int64_t i = it - first;
      if (ph == 1) {
        if (t.factored) sums_factored(t, i, l.scratch); else sums_plain(t, i, l.scratch);
      } else if (ph == 3) {
        if (t.factored) tile_factored<false>(c, t, i, l.scratch); else tile_plain<false>(c, t, i, l.scratch);
      } else {
        if (t.factored) tile_factored<true>(c, t, i, l.scratch); else tile_plain<true>(c, t, i, l.scratch);
      }
    }
  }

  // Tensors k = me, me + parts, ... in phase 2 or 4.
  static void tensors(const Coef& c, const AdafactorList& l, int64_t me, int64_t parts, int ph) {
    for (int64_t k = me; k < l.count; k += parts) {
      if (l.t[k].items == 0) continue;
      if (ph == 2) factors(c, l.t[k], l.scratch); else clip(c, l.t[k], l.scratch);
    }
  }
};

template <class T>
void adafactor_step(const AdafactorList& l, const AdafactorScalars& s, int threads) {
  using A = Adafactor<T>;
  if (l.items == 0) return;
  const typename A::Coef c(s);
#if defined(FUSEDOPT_HAVE_OPENMP)
  if (threads > 1 && l.items > 1) threads = runtime::region_threads(threads);  // 1 after fork()
  if (threads > 1 && l.items > 1) {
    const std::uint64_t fp = runtime::fp_control();
#pragma omp parallel num_threads(threads)
    {
      const CallerFpControl fp_scope(fp);  // parallel.inl
      const int64_t parts = omp_get_num_threads();
      const int64_t me = omp_get_thread_num();
      const int64_t lo = l.items * me / parts, hi = l.items * (me + 1) / parts;
      A::items(c, l, lo, hi, 1);
#pragma omp barrier
      A::tensors(c, l, me, parts, 2);
#pragma omp barrier
      A::items(c, l, lo, hi, 3);
#pragma omp barrier
      A::tensors(c, l, me, parts, 4);
#pragma omp barrier
      A::items(c, l, lo, hi, 5);
    }
    return;
  }
#else
  (void)threads;
#endif
  A::items(c, l, 0, l.items, 1);
  A::tensors(c, l, 0, 1, 2);
  A::items(c, l, 0, l.items, 3);
  A::tensors(c, l, 0, 1, 4);
  A::items(c, l, 0, l.items, 5);
}
