// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning", v5 Alg. 2; optax `lamb`;
// torch_optimizer `Lamb` as a preset). Spec: reference.py::lamb. Roles: param, grad, exp_avg,
// exp_avg_sq. A trust-ratio algorithm (trust.inl): phase 1 updates the moments and sums the
// squares of p and u, phase 2 recomputes u from the stored moments and applies it.
//
//   g = sign*pre(grad)
//   m = b1*m + (1-b1)*g
//   v = b2*v + ((1-b2)*g)*g                      (Adam's order, adam.inl)
//   u = (m_scale*m)/(sqrt(v) + eps)              m_scale = sqrt(bc2)/bc1, eps = eps*sqrt(bc2) with
//   u = u + wd*p        (only when wd != 0)       bias correction (= m_hat/(sqrt(v_hat)+eps) exactly
//                                                 in real arithmetic), else 1 and eps
//   w = ||p|| (pre-step), clamped above by clamp_value; n = ||u||
//   ratio = 1 if adam or w == 0 or n == 0, else w/n       (float64; NaN norms give NaN)
//   p = p + fl(neg_lr*ratio)*u

struct Lamb {
  using Scalars = LambScalars;
  static constexpr int kRoles = 4, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 3;  // exp_avg_sq
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_avg_sq{};

  template <class C>
  struct Coef {
    C A, E, beta1, omb1, beta2, omb2, wd, sign;
    bool has_wd;
    explicit Coef(const LambScalars& s)
        : A(C(s.m_scale)), E(C(s.eps)), beta1(C(s.beta1)), omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)),
          omb2(C(s.one_minus_beta2)), wd(C(s.weight_decay)), sign(s.maximize ? C(-1) : C(1)),
          has_wd(s.weight_decay != 0.0) {}
  };

  // u from the new moments and the pre-step parameter (both phases: the same operations).
  template <class C>
  static C update(const Coef<C>& c, C p, C m, C v) {
    const C u = (c.A * m) / (std::sqrt(v) + c.E);
    const C u_wd = u + c.wd * p;  // computed always, then selected (an infinite p with wd = 0 stays out)
    return c.has_wd ? u_wd : u;
  }

  template <class C, class E>
  static C direction(const Coef<C>& c, const E& e, int64_t i) {
    const C g = c.sign * e.grad(i);
    const C m = c.beta1 * e.load(exp_avg, i) + c.omb1 * g;
    const C v = c.beta2 * e.load(exp_avg_sq, i) + (c.omb2 * g) * g;
    e.store(exp_avg, i, m);
    e.store(exp_avg_sq, i, v);
    return update(c, e.load(param, i), m, v);
  }

  static double tensor_scalar(const LambScalars& s, double sumsq_p, double sumsq_u) {
    if (s.adam) return s.neg_lr;
    double w = std::sqrt(sumsq_p);
    const double n = std::sqrt(sumsq_u);
    if (w > s.clamp_value) w = s.clamp_value;  // NaN stays NaN
    const double ratio = (w == 0.0 || n == 0.0) ? 1.0 : w / n;
    return s.neg_lr * ratio;
  }

  template <class C, class E>
  static void apply(const Coef<C>& c, const E& e, int64_t i, C step) {
    const C p = e.load(param, i);
    const C u = update(c, p, e.load(exp_avg, i), e.load(exp_avg_sq, i));
    e.store(param, i, p + step * u);
  }
};
