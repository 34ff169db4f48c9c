// RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate and Beyond"), as
// torch.optim.RAdam. Spec: reference.py::radam — same operations, same order, same dtype.
// Roles: param, grad, exp_avg, exp_avg_sq. Variant 1: a rectified step (rho_t > 5, strict).
//
//   g = sign*pre(grad);   L2: g = g + wd*p;   decoupled: p = p*decay   (decay = 1 - lr*wd, else exactly 1)
//   m = b1*m + (1-b1)*g
//   v = b2*v + ((1-b2)*g)*g
//   x = (m / bc1) * lr
//   rectified:  x = (x * ((1 / (sqrt(v) + eps)) * sqrt(bc2))) * rect     (eps on the un-corrected root)
//   p = p - x
// bc1, sqrt(bc2), rect and whether the step is rectified are float64 per-step values
// (python/fusedopt/_scalars.py::radam_scalars), so the element work stays element-wise. This is
// torch's loop (_single_tensor_radam) order: `bc2**0.5 / tensor` is reciprocal()*c there, kept
// here; torch's rounding differs only where it fuses: m is a lerp (an FMA), v's addcmul and the
// L2 term add(alpha=) are FMAs.

struct Radam {
  using Scalars = RadamScalars;
  static constexpr int kRoles = 4, kVariants = 2;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 3;  // exp_avg_sq
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_avg_sq{};
  static int variant(const RadamScalars& s) { return s.rectified ? 1 : 0; }

  template <class C>
  struct Coef {
    C bc1, lr, eps, root2, rect, beta1, omb1, beta2, omb2, wd, decay, sign;
    bool has_wd;
    explicit Coef(const RadamScalars& s)
        : bc1(C(s.bias_correction1)), lr(C(s.lr)), eps(C(s.eps)), root2(C(s.bias_correction2_sqrt)),
          rect(C(s.rect)), beta1(C(s.beta1)), omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)),
          omb2(C(s.one_minus_beta2)), wd(C(s.weight_decay)), decay(C(s.decay_factor)),
          sign(s.maximize ? C(-1) : C(1)), has_wd(s.weight_decay != 0.0) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    p = p * c.decay;
    const C m = c.beta1 * e.load(exp_avg, i) + c.omb1 * g;
    const C v = c.beta2 * e.load(exp_avg_sq, i) + (c.omb2 * g) * g;
    e.store(exp_avg, i, m);
    e.store(exp_avg_sq, i, v);
    C x = (m / c.bc1) * c.lr;
    if constexpr (V == 1) {
      const C r = (C(1) / (std::sqrt(v) + c.eps)) * c.root2;
      x = (x * r) * c.rect;
    }
    e.store(param, i, p - x);
  }
};
