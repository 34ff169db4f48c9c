// Momentum as an exponential moving average (Ng, Deep Learning Specialization, course 2).
// Spec: reference.py::momentum. Roles: param, grad, velocity.
//
//   g = pre(grad);  if wd: g = g + wd*p
//   v = beta*v + (1-beta)*g
//   p = p - step_size*v          step_size = lr, or lr/(1-beta^t) with bias correction

struct Momentum {
  using Scalars = MomentumScalars;
  static constexpr int kRoles = 3, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 0;
  static constexpr Role<0> param{};
  static constexpr Role<2> velocity{};
  static int variant(const MomentumScalars&) { return 0; }

  template <class C>
  struct Coef {
    C step, beta, omb, wd;
    bool has_wd;
    explicit Coef(const MomentumScalars& s)
        : step(C(s.step_size)), beta(C(s.beta)), omb(C(s.one_minus_beta)), wd(C(s.weight_decay)),
          has_wd(s.has_weight_decay) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C p = e.load(param, i);
    C g = e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    const C v = c.beta * e.load(velocity, i) + c.omb * g;
    e.store(velocity, i, v);
    e.store(param, i, p - c.step * v);
  }
};
