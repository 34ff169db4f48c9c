// RMSprop: torch.optim.RMSprop (default) and the TF/Keras/optax forms (eps inside the sqrt, lr
// inside the momentum buffer). Reads p, g, v (and g_avg, b); writes the same.
// Spec: python/fusedopt/reference.py::rmsprop.
//
//   g = pre(grad) (grad.inl);  g = -g if maximize;   if wd: g = g + wd*p
//   v = alpha*v + ((1-alpha)*g)*g
//   centered:  g_avg = alpha*g_avg + (1-alpha)*g;  a = sqrt((v - g_avg*g_avg) + eps_in) + eps_out
//   else:      a = sqrt(v + eps_in) + eps_out
//   momentum:  b = mu*b + (buffer_lr*g)/a;  p = p - lr*b
//   else:      p = p - (lr*g)/a
//
// One of eps_in / eps_out is 0 and buffer_lr or lr is 1 (step_args.hpp): adding +0 to a value
// >= +0 (or NaN) and multiplying by 1 are exact, so the torch form (eps_in = 0, buffer_lr = 1)
// rounds exactly like sqrt(v) + eps and g/a, and no extra template instances are needed.
// Centered: NaN when rounding makes v - g_avg^2 (+ eps_in) negative, as torch (no clamp).

template <class T>
struct RmspropCoef {
  T lr, buffer_lr, alpha, one_minus_alpha, eps_out, eps_in, weight_decay, momentum;
};

template <class T, bool Pre, bool Wd, bool Centered, bool Momentum, bool Maximize>
void rmsprop_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT v,
                  T* FUSEDOPT_RESTRICT gavg, T* FUSEDOPT_RESTRICT buf, int64_t n, const RmspropCoef<T> c,
                  const GradCoef<T> gc) {
  const T lr = c.lr, blr = c.buffer_lr, alpha = c.alpha, oma = c.one_minus_alpha;
  const T eps_out = c.eps_out, eps_in = c.eps_in;
  const T wd = c.weight_decay, mu = c.momentum;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    if constexpr (Maximize) gi = -gi;
    const T pi = p[i];
    if constexpr (Wd) gi = gi + wd * pi;
    const T vi = alpha * v[i] + (oma * gi) * gi;
    v[i] = vi;
    T avg;
    if constexpr (Centered) {
      const T ai = alpha * gavg[i] + oma * gi;
      gavg[i] = ai;
      avg = std::sqrt((vi - ai * ai) + eps_in) + eps_out;
    } else {
      avg = std::sqrt(vi + eps_in) + eps_out;
    }
    if constexpr (Momentum) {
      const T bi = mu * buf[i] + (blr * gi) / avg;
      buf[i] = bi;
      p[i] = pi - lr * bi;
    } else {
      p[i] = pi - (lr * gi) / avg;
    }
  }
}

template <class T>
void rmsprop_step(const TensorList& list, const RmspropScalars& s, const GradScalars& gs, int threads) {
  const GradCoef<T> gc = grad_coef<T>(gs);
  const RmspropCoef<T> c{static_cast<T>(s.lr),          static_cast<T>(s.buffer_lr),
                         static_cast<T>(s.alpha),       static_cast<T>(s.one_minus_alpha),
                         static_cast<T>(s.eps_outside), static_cast<T>(s.eps_inside),
                         static_cast<T>(s.weight_decay), static_cast<T>(s.momentum)};
  with_flag(gs.active, [&](auto pre) {
    with_flag(s.has_weight_decay, [&](auto wd) {
      with_flag(s.centered, [&](auto centered) {
        with_flag(s.has_momentum, [&](auto momentum) {
          with_flag(s.maximize, [&](auto maximize) {
            for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
              rmsprop_span<T, decltype(pre)::value, decltype(wd)::value, decltype(centered)::value,
                           decltype(momentum)::value, decltype(maximize)::value>(
                  buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b),
                  buffer<T>(list, k, 3, b), buffer<T>(list, k, 4, b), e - b, c, gc);
            });
          });
        });
      });
    });
  });
}
