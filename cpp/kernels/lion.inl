// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2), torch-style
// decoupled decay. Spec: reference.py::lion. Roles: param, grad, exp_avg.
//
//   g = sign*pre(grad)
//   p = p*decay_factor                     decay_factor = 1 - lr*wd (float64), exactly 1 without wd
//   c = beta1*m + (1-beta1)*g              (the old m)
//   p = p - lr*sgn(c)                      sgn: +1, -1, +0 for +-0 (no move), NaN for NaN
//   m = beta2*m + (1-beta2)*g

// sgn(c) in the compute type: +1, -1, +0 for +-0, NaN for NaN. Every comparison is made
// unconditionally (a comparison may trap, so GCC would not if-convert a nested one).
template <class C>
inline C lion_sign(C c) {
  const C s = choose(c > C(0), C(1), C(0)) - choose(c < C(0), C(1), C(0));  // 1-0, 0-1 or 0-0 = +0
  return choose(c == c, s, c);
}

struct Lion {
  using Scalars = LionScalars;
  static constexpr int kRoles = 3, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 0;
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static int variant(const LionScalars&) { return 0; }

  template <class C>
  struct Coef {
    C lr, beta1, omb1, beta2, omb2, decay, sign;
    explicit Coef(const LionScalars& s)
        : lr(C(s.lr)), beta1(C(s.beta1)), omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)),
          omb2(C(s.one_minus_beta2)), decay(C(s.decay_factor)), sign(s.maximize ? C(-1) : C(1)) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C g = c.sign * e.grad(i);
    const C m = e.load(exp_avg, i);
    const C u = c.beta1 * m + c.omb1 * g;
    e.store(param, i, e.load(param, i) * c.decay - c.lr * lion_sign(u));
    e.store(exp_avg, i, c.beta2 * m + c.omb2 * g);
  }
};
