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
//   g = sign*pre(grad)
//   L2:  g = fma(p, W, g)                 p = p*D (D = 1 - lr*wd decoupled, exactly 1 otherwise)
//   m = fma(w1, g - m, m) if w1 < 0.5 else fma(w1 - 1, g - m, g)     (torch's lerp)
//   v = fma(c2*g, g, v*b2)
//   s = max(v_max, v) (amsgrad) else v
//   p = p + (S*m) / (sqrt(s)/R + E)     S = -lr/(1-b1^t), R = sqrt(1-b2^t), E = eps (torch's order)

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

struct AdamTorchExact {
  using Scalars = AdamScalars;
  static constexpr int kRoles = 5, kVariants = 2;
  static constexpr bool kGrad = true;
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_avg_sq{};
  static constexpr Role<4> max_exp_avg_sq{};
  static int variant(const AdamScalars& s) { return s.amsgrad ? 1 : 0; }

  template <class C>
  struct Coef {
    C S, R, E, w1, w1m1, c2, b2, W, D, sign;
    bool has_wd, lerp_from_m;
    explicit Coef(const AdamScalars& s)
        : S(C(s.torch_neg_step_size)), R(C(s.bias_correction2_sqrt)), E(C(s.torch_eps)), w1(C(s.one_minus_beta1)),
          w1m1(w1 - C(1)), c2(C(s.one_minus_beta2)), b2(C(s.beta2)), W(C(s.weight_decay)), D(C(s.decay_factor)),
          sign(s.maximize ? C(-1) : C(1)), has_wd(s.weight_decay != 0.0), lerp_from_m(w1 < C(0.5) && w1 > C(-0.5)) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = fma32(p, c.W, g);  // computed always, then selected: no branch in the loop
    g = choose(c.has_wd, g_wd, g);
    p = p * c.D;
    const C mo = e.load(exp_avg, i);
    // torch's lerp: one fma32 with the operands of the form in use (a select, exact)
    const C m = fma32(c.lerp_from_m ? c.w1 : c.w1m1, g - mo, choose(c.lerp_from_m, mo, g));
    const C v = fma32(c.c2 * g, g, e.load(exp_avg_sq, i) * c.b2);
    e.store(exp_avg, i, m);
    e.store(exp_avg_sq, i, v);
    C s = v;
    if constexpr (V == 1) {
      const C old = e.load(max_exp_avg_sq, i);
      s = (v > old || v != v) ? v : old;
      e.store(max_exp_avg_sq, i, s);
    }
    e.store(param, i, p + (c.S * m) / (std::sqrt(s) / c.R + c.E));
  }
};
