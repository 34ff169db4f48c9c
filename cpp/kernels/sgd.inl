// SGD with optional (Nesterov) momentum, torch.optim.SGD semantics. Spec: reference.py::sgd.
// Roles: param, grad, momentum_buffer (variants: 0 no momentum, 1 momentum, 2 Nesterov).
//
//   g = sign*pre(grad);   if wd: g = g + wd*p
//   momentum:  b = g (first step)  else  b = mu*b + (1-dampening)*g
//              d = g + mu*b (nesterov)  else  d = b
//   p = p - lr*d

struct Sgd {
  using Scalars = SgdScalars;
  static constexpr int kRoles = 3, kVariants = 3;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 0;
  static constexpr Role<0> param{};
  static constexpr Role<2> momentum_buffer{};
  static int variant(const SgdScalars& s) { return !s.has_momentum ? 0 : (s.nesterov ? 2 : 1); }

  template <class C>
  struct Coef {
    C lr, wd, mu, omd, sign;
    bool has_wd, first;
    explicit Coef(const SgdScalars& s)
        : lr(C(s.lr)), wd(C(s.weight_decay)), mu(C(s.momentum)), omd(C(s.one_minus_dampening)),
          sign(s.maximize ? C(-1) : C(1)), has_wd(s.has_weight_decay), first(s.first_step) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    C d = g;
    if constexpr (V >= 1) {
      const C b_ema = c.mu * e.load(momentum_buffer, i) + c.omd * g;
      const C b = c.first ? g : b_ema;
      e.store(momentum_buffer, i, b);
      if constexpr (V == 2) {
        d = g + c.mu * b;
      } else {
        d = b;
      }
    }
    e.store(param, i, p - c.lr * d);
  }
};
