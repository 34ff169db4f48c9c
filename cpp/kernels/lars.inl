// LARS (You, Gitman, Ginsburg 2017, arXiv 1708.03888) for SGD with momentum, in the form of
// facebookresearch/barlowtwins' and DINO's `LARS` (the most used in PyTorch). Spec:
// reference.py::lars. Roles: param, grad, mu. A trust-ratio algorithm (trust.inl): phase 1 sums the
// squares of p and d, phase 2 recomputes d and applies the momentum step.
//
//   g = sign*pre(grad)
//   d = g + wd*p                    (only when wd != 0)
//   w = ||p||, n = ||d||            (pre-step p)
//   q = (eta*w)/(n + eps) if adapt and w > 0 and n > 0, else 1      (float64; NaN norms give 1)
//   mu = momentum*mu + q*d
//   p = p + neg_lr*mu               (lr outside the buffer: torch SGD's convention)

struct Lars {
  using Scalars = LarsScalars;
  static constexpr int kRoles = 3, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 0;
  static constexpr Role<0> param{};
  static constexpr Role<2> mu{};

  template <class C>
  struct Coef {
    C neg_lr, momentum, wd, sign;
    bool has_wd;
    explicit Coef(const LarsScalars& s)
        : neg_lr(C(s.neg_lr)), momentum(C(s.momentum)), wd(C(s.weight_decay)), sign(s.maximize ? C(-1) : C(1)),
          has_wd(s.weight_decay != 0.0) {}
  };

  template <class C>
  static C update(const Coef<C>& c, C g, C p) {
    const C d_wd = g + c.wd * p;  // computed always, then selected (an infinite p with wd = 0 stays out)
    return c.has_wd ? d_wd : g;
  }

  template <class C, class E>
  static C direction(const Coef<C>& c, const E& e, int64_t i) {
    return update(c, c.sign * e.grad(i), e.load(param, i));
  }

  static double tensor_scalar(const LarsScalars& s, double sumsq_p, double sumsq_u) {
    if (!s.adapt) return 1.0;
    const double w = std::sqrt(sumsq_p);
    const double n = std::sqrt(sumsq_u);
    return (w > 0.0 && n > 0.0) ? (s.eta * w) / (n + s.eps) : 1.0;
  }

  template <class C, class E>
  static void apply(const Coef<C>& c, const E& e, int64_t i, C q) {
    const C p = e.load(param, i);
    const C d = update(c, c.sign * e.grad(i), p);
    const C b = c.momentum * e.load(mu, i) + q * d;
    e.store(mu, i, b);
    e.store(param, i, p + c.neg_lr * b);
  }
};
