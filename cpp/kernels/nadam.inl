// NAdam (Dozat 2016, "Incorporating Nesterov Momentum into Adam"), as torch.optim.NAdam (its loop
// form, _single_tensor_nadam, torch's CPU default). Spec: reference.py::nadam — same operations,
// same order, same dtype. Roles: param, grad, exp_avg, exp_avg_sq.
//
//   g = sign*pre(grad);   L2: g = g + wd*p;   decoupled: p = p*decay   (decay = 1 - lr*wd, else exactly 1)
//   m = b1*m + (1-b1)*g
//   v = b2*v + ((1-b2)*g)*g
//   den = sqrt(v / bc2) + eps                 (loop form: the division inside the root)
//   p = p + (cg*g)/den
//   p = p + (cm*m)/den                        (two separate roundings of p, as torch's two addcdiv_)
// cg = -lr(1-mu_t)/(1-P), cm = -lr*mu_{t+1}/(1-P*mu_{t+1}) and bc2 = 1-b2^t are float64 per-step
// values (python/fusedopt/_scalars.py::nadam_scalars) from the parameter's mu_product P (after this
// step's factor): parameters with different P are stepped by different calls. torch's rounding
// differs only where it fuses: m is a lerp (an FMA), v's addcmul and the L2 add(alpha=) are FMAs.

struct Nadam {
  using Scalars = NadamScalars;
  static constexpr int kRoles = 4, kVariants = 1;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 3;  // exp_avg_sq
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_avg_sq{};
  static int variant(const NadamScalars&) { return 0; }

  template <class C>
  struct Coef {
    C cg, cm, bc2, eps, beta1, omb1, beta2, omb2, wd, decay, sign;
    bool has_wd;
    explicit Coef(const NadamScalars& s)
        : cg(C(s.grad_coef)), cm(C(s.momentum_coef)), bc2(C(s.bias_correction2)), eps(C(s.eps)),
          beta1(C(s.beta1)), omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)), omb2(C(s.one_minus_beta2)),
          wd(C(s.weight_decay)), decay(C(s.decay_factor)), sign(s.maximize ? C(-1) : C(1)),
          has_wd(s.weight_decay != 0.0) {}
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
    const C den = std::sqrt(v / c.bc2) + c.eps;
    p = p + (c.cg * g) / den;
    e.store(param, i, p + (c.cm * m) / den);
  }
};
