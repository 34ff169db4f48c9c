// Muon (torch.optim.Muon, torch 2.13 torch/optim/_muon.py): the two element-wise halves of its
// step; the Newton-Schulz orthogonalization between them is matrix products (BLAS, in Python).
// Spec: reference.py::muon_momentum and reference.py::muon_apply. Roles: param, grad,
// momentum_buffer, update (the same four in both phases; a phase touches only its own).
//
// Momentum phase (variants 0, 1 = nesterov), torch's lerp (SEMANTICS-ALGORITHMS.md §0):
//   g = pre(grad)
//   B = lerp(B, g, 1-mu)                     buf.lerp_(grad, 1 - momentum)
//   U = lerp(g, B, mu) if nesterov else B    grad.lerp(buf, momentum)
//   lerp(s, e, w) = fma(w, e-s, s) if |w| < 0.5 else fma(w-1, e-s, e)   (w, w-1 rounded to C)
// Apply phase (variant 2), the update U' being the Newton-Schulz output:
//   p = p*decay                              decay = 1 - lr*wd (the UNadjusted lr), double, cast once
//   p = fma(U', -lr_adjusted, p)             param.add_(update, alpha=-adjusted_lr)
// fma32 (torch_exact.inl) is the correctly rounded float32 fma; float64 uses a*b + c.

struct Muon {
  using Scalars = MuonScalars;
  static constexpr int kRoles = 4, kVariants = 3;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 0;
  static constexpr Role<0> param{};
  static constexpr Role<2> momentum_buffer{};
  static constexpr Role<3> update{};
  static int variant(const MuonScalars& s) { return s.apply ? 2 : (s.nesterov ? 1 : 0); }

  template <class C>
  struct Coef {
    C wb, wbm1, wn, wnm1, decay, neg_lr;
    bool b_from_s, n_from_s;  // |w| < 0.5: lerp from its start, else from its end
    explicit Coef(const MuonScalars& s)
        : wb(C(s.one_minus_momentum)), wbm1(wb - C(1)), wn(C(s.momentum)), wnm1(wn - C(1)),
          decay(C(s.decay_factor)), neg_lr(C(s.neg_lr)), b_from_s(wb < C(0.5) && wb > C(-0.5)),
          n_from_s(wn < C(0.5) && wn > C(-0.5)) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    if constexpr (V == 2) {
      const C p = e.load(param, i) * c.decay;
      e.store(param, i, fma32(e.load(update, i), c.neg_lr, p));
    } else {
      const C g = e.grad(i);
      const C bo = e.load(momentum_buffer, i);
      const C b = fma32(c.b_from_s ? c.wb : c.wbm1, g - bo, choose(c.b_from_s, bo, g));
      e.store(momentum_buffer, i, b);
      if constexpr (V == 1) {
        e.store(update, i, fma32(c.n_from_s ? c.wn : c.wnm1, b - g, choose(c.n_from_s, g, b)));
      } else {
        e.store(update, i, b);
      }
    }
  }
};
