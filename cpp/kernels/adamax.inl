// Adamax (Kingma & Ba 2015, §7.1: Adam with the infinity norm), as torch.optim.Adamax.
// Spec: reference.py::adamax — same operations, same order, same dtype.
// Roles: param, grad, exp_avg, exp_inf.
//
//   g = sign*pre(grad);   L2: g = g + wd*p
//   m = b1*m + (1-b1)*g
//   u = max(b2*u, |g| + eps)             eps inside the max and stored (torch, optax); NaN propagates
//   p = p + (S*m)/u                       S = -lr/(1-b1^t) (float64, python/fusedopt/_scalars.py)
// torch's rounding differs only where it fuses: its m is a lerp (an FMA) and its L2 term an FMA;
// u and the final addcdiv are torch's own operations in torch's order.

struct Adamax {
  using Scalars = AdamaxScalars;
  static constexpr int kRoles = 4, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 3;  // exp_inf
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_inf{};
  static int variant(const AdamaxScalars&) { return 0; }

  template <class C>
  struct Coef {
    C S, eps, beta1, omb1, beta2, wd, sign;
    bool has_wd;
    explicit Coef(const AdamaxScalars& s)
        : S(C(s.neg_clr)), eps(C(s.eps)), beta1(C(s.beta1)), omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)),
          wd(C(s.weight_decay)), sign(s.maximize ? C(-1) : C(1)), has_wd(s.weight_decay != 0.0) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    const C m = c.beta1 * e.load(exp_avg, i) + c.omb1 * g;
    const C a = c.beta2 * e.load(exp_inf, i);
    const C b = std::abs(g) + c.eps;
    const C u = (a > b || a != a) ? a : b;  // torch.maximum: NaN if either is NaN
    e.store(exp_avg, i, m);
    e.store(exp_inf, i, u);
    e.store(param, i, p + (c.S * m) / u);
  }
};
