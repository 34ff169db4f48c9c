// Adagrad, torch.optim.Adagrad semantics. Spec: reference.py::adagrad. Roles: param, grad, sum.
//
//   g = sign*pre(grad);   if wd: g = g + wd*p
//   sum = sum + g*g
//   p = p + (C*g) / (sqrt(sum) + eps)     C = -lr/(1 + (t-1)*lr_decay)
//
// One square root and one division per element; the lr decay is already folded into C.

struct Adagrad {
  using Scalars = AdagradScalars;
  static constexpr int kRoles = 3, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 2;  // sum
  static constexpr Role<0> param{};
  static constexpr Role<2> sum{};
  static int variant(const AdagradScalars&) { return 0; }

  template <class C>
  struct Coef {
    C neg_clr, eps, wd, sign;
    bool has_wd;
    explicit Coef(const AdagradScalars& s)
        : neg_clr(C(s.neg_clr)), eps(C(s.eps)), wd(C(s.weight_decay)), sign(s.maximize ? C(-1) : C(1)),
          has_wd(s.has_weight_decay) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    const C s = e.load(sum, i) + g * g;
    e.store(sum, i, s);
    e.store(param, i, p + (c.neg_clr * g) / (std::sqrt(s) + c.eps));
  }
};
