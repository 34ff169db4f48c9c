// Adam / AdamW, one pass: reads p, g, m, v (and v_max), writes p, m, v (and v_max).
// Spec: reference.py::adam — same operations, same order, same dtype.
// Roles: param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq (variant 1: amsgrad).
//
// The Adam paper's "more efficient order" (Kingma & Ba, end of §2): the bias corrections are
// folded into two scalars computed in float64 (python/fusedopt/_scalars.py::adam_scalars), so an
// element costs one IEEE square root and one IEEE division:
//
//   g  = sign*pre(grad) (grad.inl);   L2: g = g + wd*p
//   p  = p*decay_factor                (1 - lr*wd with decoupled decay; exactly 1 otherwise)
//   m  = b1*m + (1-b1)*g
//   v  = b2*v + ((1-b2)*g)*g
//   s  = max(v_max, v) (amsgrad, stored back; NaN propagates) else v
//   p  = p + (S*m) / (sqrt(s + R) + E)
//
//   torch/Ng/Kingma-Ba:  S = -lr*sqrt(bc2)/bc1,  E = eps*sqrt(bc2),  R = 0
//   Keras/TF epsilon-hat: S = -lr*sqrt(bc2)/bc1,  E = eps,            R = 0
//   optax eps_root:       S = -lr*sqrt(bc2)/bc1,  E = eps*sqrt(bc2),  R = eps_root*bc2
//   (bc1 = 1-b1^t, bc2 = 1-b2^t). R = +0 adds exactly nothing (s >= +0 or NaN).
// The torch_exact path (torch_exact.inl) keeps torch's own order.

struct Adam {
  using Scalars = AdamScalars;
  static constexpr int kRoles = 5, kVariants = 2;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = (1u << 3) | (1u << 4);  // exp_avg_sq, max_exp_avg_sq
  static constexpr Role<0> param{};
  static constexpr Role<2> exp_avg{};
  static constexpr Role<3> exp_avg_sq{};
  static constexpr Role<4> max_exp_avg_sq{};
  static int variant(const AdamScalars& s) { return s.amsgrad ? 1 : 0; }

  template <class C>
  struct Coef {
    C S, E, R, beta1, omb1, beta2, omb2, wd, decay, sign;
    bool has_wd;
    explicit Coef(const AdamScalars& s)
        : S(C(s.neg_step_size)), E(C(s.eps_scaled)), R(C(s.eps_root_scaled)), beta1(C(s.beta1)),
          omb1(C(s.one_minus_beta1)), beta2(C(s.beta2)), omb2(C(s.one_minus_beta2)), wd(C(s.weight_decay)),
          decay(C(s.decay_factor)), sign(s.maximize ? C(-1) : C(1)), has_wd(s.weight_decay != 0.0) {}
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
    C s = v;
    if constexpr (V == 1) {
      const C old = e.load(max_exp_avg_sq, i);
      s = (v > old || v != v) ? v : old;
      e.store(max_exp_avg_sq, i, s);
    }
    e.store(param, i, p + (c.S * m) / (std::sqrt(s + c.R) + c.E));
  }
};

template <class T>
void adam_step(const TensorList& list, const AdamScalars& s, const GradScalars& gs, int threads) {
  if (s.torch_exact) {
    step<AdamTorchExact, T>(list, s, gs, threads);
  } else {
    step<Adam, T>(list, s, gs, threads);
  }
}
