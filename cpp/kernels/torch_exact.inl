// Adam/AdamW float32 with the rounding of torch 2.13's fused CPU kernel (SEMANTICS.md §3.2),
// opt-in (`torch_exact=True`). Spec: python/fusedopt/reference.py::adam (torch_exact branch).
//
// torch's kernel uses fused multiply-adds. Baseline x86-64 has no FMA instruction (std::fma is a
// libm call there) and the other kernels are built with contraction off, so the FMA is emulated
// with plain IEEE double arithmetic, identically on every ISA:
//   p = double(a)*double(b)            exact (24+24 significant bits < 53)
//   s = p + double(c), e = exact error of that sum (TwoSum)
//   round s to odd (if e != 0 and s is even, step one double ulp toward e), then cast to float:
// rounding to odd in a format with >= 2 more bits than the target makes the final rounding
// correct, so fma32(a, b, c) == the correctly rounded a*b + c (what a hardware FMA returns).
//
//   g = pre(grad); g = -g if maximize
//   L2:  g = fma(p, W, g)                 decoupled:  p = p*D
//   m = fma(w1, g - m, m) if w1 < 0.5 else fma(w1 - 1, g - m, g)     (torch's lerp)
//   v = fma(c2*g, g, v*b2)
//   s = max(v_max, v) (amsgrad) else v
//   p = p + (S*m) / (sqrt(s)/R + E)

inline float fma32(float a, float b, float c) {
  const double p = static_cast<double>(a) * static_cast<double>(b);
  const double cd = static_cast<double>(c);
  const double s = p + cd;
  const double bb = s - p;
  const double e = (p - (s - bb)) + (cd - bb);
  // Round to odd, branch-free so that it vectorizes (masks as 0/1 integers, no && / ?: on the
  // data path): if inexact, finite and even, step one ulp toward e (away from zero when e has the
  // sign of s, toward zero otherwise). __builtin_bit_cast: GCC >= 11, Clang, MSVC.
  const int64_t bits = __builtin_bit_cast(int64_t, s);
  const int64_t inexact = (e != 0.0) ? 1 : 0;
  const int64_t finite = (s - s == 0.0) ? 1 : 0;
  const int64_t even = (bits & 1) ^ 1;
  const int64_t toward_e = ((e > 0.0) == (s > 0.0)) ? 1 : -1;
  const int64_t odd = bits + (inexact & finite & even) * toward_e;
  return static_cast<float>(__builtin_bit_cast(double, odd));
}

// float64 has no torch-exact mode (the Python layer refuses it); keep the table complete.
inline double fma32(double a, double b, double c) { return a * b + c; }

template <class T, bool Pre, int Wd, bool Amsgrad, bool Maximize, bool LerpFromM>
void adam_torch_exact_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT m,
                           T* FUSEDOPT_RESTRICT v, T* FUSEDOPT_RESTRICT vmax, int64_t n, const T S, const T R,
                           const T E, const T w1, const T c2, const T b2, const T W, const T D,
                           const GradCoef<T> gc) {
  const T w1m1 = w1 - T(1);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    if constexpr (Maximize) gi = -gi;
    T pi = p[i];
    if constexpr (Wd == kL2) gi = fma32(pi, W, gi);
    if constexpr (Wd == kDecoupled) pi = pi * D;
    const T mo = m[i];
    const T mi = LerpFromM ? fma32(w1, gi - mo, mo) : fma32(w1m1, gi - mo, gi);
    const T vi = fma32(c2 * gi, gi, v[i] * b2);
    m[i] = mi;
    v[i] = vi;
    T si = vi;
    if constexpr (Amsgrad) {
      const T old = vmax[i];
      si = (vi > old || vi != vi) ? vi : old;
      vmax[i] = si;
    }
    const T den = std::sqrt(si) / R + E;
    p[i] = pi + (S * mi) / den;
  }
}

template <class T>
void adam_torch_exact_step(const TensorList& list, const AdamScalars& s, const GradScalars& gs, int threads) {
  const GradCoef<T> gc = grad_coef<T>(gs);
  const T S = static_cast<T>(s.neg_step_size), R = static_cast<T>(s.bias_correction2_sqrt);
  const T E = static_cast<T>(s.eps), w1 = static_cast<T>(s.one_minus_beta1);
  const T c2 = static_cast<T>(s.one_minus_beta2), b2 = static_cast<T>(s.beta2);
  const T W = static_cast<T>(s.weight_decay), D = static_cast<T>(s.decay_factor);
  with_flag(gs.active, [&](auto pre) {
    with_weight_decay_mode(s.weight_decay_mode, [&](auto wd) {
      with_flag(s.amsgrad, [&](auto amsgrad) {
        with_flag(s.maximize, [&](auto maximize) {
          with_flag(w1 < T(0.5) && w1 > T(-0.5), [&](auto lerp_from_m) {
            for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
              adam_torch_exact_span<T, decltype(pre)::value, decltype(wd)::value, decltype(amsgrad)::value,
                                    decltype(maximize)::value, decltype(lerp_from_m)::value>(
                  buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b),
                  buffer<T>(list, k, 3, b), buffer<T>(list, k, 4, b), e - b, S, R, E, w1, c2, b2, W, D, gc);
            });
          });
        });
      });
    });
  });
}
