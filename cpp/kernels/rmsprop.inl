// RMSprop: torch.optim.RMSprop (default) and the TF/Keras/optax forms (eps inside the sqrt, lr
// inside the momentum buffer). Spec: reference.py::rmsprop.
// Roles: param, grad, square_avg, grad_avg (variant bit 0: centered), momentum_buffer (bit 1).
//
//   g = sign*pre(grad);   if wd: g = g + wd*p
//   v = alpha*v + ((1-alpha)*g)*g
//   centered:  g_avg = alpha*g_avg + (1-alpha)*g;  a = sqrt((v - g_avg*g_avg) + eps_in) + eps_out
//   else:      a = sqrt(v + eps_in) + eps_out
//   momentum:  b = mu*b + (buffer_lr*g)/a;  p = p - lr*b
//   else:      p = p - (lr*g)/a
//
// One of eps_in / eps_out is 0 and buffer_lr or lr is 1 (step_args.hpp): adding +0 to a value
// >= +0 (or NaN) and multiplying by 1 are exact, so the torch form (eps_in = 0, buffer_lr = 1)
// rounds exactly like sqrt(v) + eps and g/a. One square root and one division per element: no
// division left to fold into a scalar. Centered: NaN when rounding makes v - g_avg^2 (+ eps_in)
// negative, as torch (no clamp).

struct Rmsprop {
  using Scalars = RmspropScalars;
  static constexpr int kRoles = 5, kVariants = 4;
  static constexpr bool kGrad = true;
  static constexpr unsigned kNonNegative = 1u << 2;  // square_avg
  static constexpr Role<0> param{};
  static constexpr Role<2> square_avg{};
  static constexpr Role<3> grad_avg{};
  static constexpr Role<4> momentum_buffer{};
  static int variant(const RmspropScalars& s) { return (s.centered ? 1 : 0) | (s.has_momentum ? 2 : 0); }

  template <class C>
  struct Coef {
    C lr, blr, alpha, oma, eps_out, eps_in, wd, mu, sign;
    bool has_wd;
    explicit Coef(const RmspropScalars& s)
        : lr(C(s.lr)), blr(C(s.buffer_lr)), alpha(C(s.alpha)), oma(C(s.one_minus_alpha)), eps_out(C(s.eps_outside)),
          eps_in(C(s.eps_inside)), wd(C(s.weight_decay)), mu(C(s.momentum)), sign(s.maximize ? C(-1) : C(1)),
          has_wd(s.has_weight_decay) {}
  };

  template <int V, class C, class E>
  static void element(const Coef<C>& c, const E& e, int64_t i) {
    const C p = e.load(param, i);
    C g = c.sign * e.grad(i);
    const C g_wd = g + c.wd * p;  // computed always, then selected: no branch in the loop
    g = c.has_wd ? g_wd : g;
    const C v = c.alpha * e.load(square_avg, i) + (c.oma * g) * g;
    e.store(square_avg, i, v);
    C a;
    if constexpr ((V & 1) != 0) {
      const C ga = c.alpha * e.load(grad_avg, i) + c.oma * g;
      e.store(grad_avg, i, ga);
      a = std::sqrt((v - ga * ga) + c.eps_in) + c.eps_out;
    } else {
      a = std::sqrt(v + c.eps_in) + c.eps_out;
    }
    if constexpr ((V & 2) != 0) {
      const C b = c.mu * e.load(momentum_buffer, i) + (c.blr * g) / a;
      e.store(momentum_buffer, i, b);
      e.store(param, i, p - c.lr * b);
    } else {
      e.store(param, i, p - (c.lr * g) / a);
    }
  }
};
