// SGD with optional (Nesterov) momentum, torch.optim.SGD semantics. Reads p, g (and b), writes p (and b).
// Spec: python/fusedopt/reference.py::sgd.
//
//   g = pre(grad) (grad.inl);  g = -g if maximize;   if wd: g = g + wd*p
//   momentum:  b = g (first step)  else  b = mu*b + (1-dampening)*g
//              d = g + mu*b (nesterov)  else  d = b
//   p = p - lr*d

template <class T>
struct SgdCoef {
  T lr, weight_decay, momentum, one_minus_dampening;
};

template <class T, bool Pre, bool Wd, bool Momentum, bool Nesterov, bool Maximize, bool First>
void sgd_span(T* FUSEDOPT_RESTRICT p, const T* FUSEDOPT_RESTRICT g, T* FUSEDOPT_RESTRICT buf,
              int64_t n, const SgdCoef<T> c, const GradCoef<T> gc) {
  const T lr = c.lr, wd = c.weight_decay, mu = c.momentum, omd = c.one_minus_dampening;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T gi = load_grad<Pre>(g[i], gc);
    if constexpr (Maximize) gi = -gi;
    const T pi = p[i];
    if constexpr (Wd) gi = gi + wd * pi;
    T d = gi;
    if constexpr (Momentum) {
      T bi;
      if constexpr (First) {
        bi = gi;
      } else {
        bi = mu * buf[i] + omd * gi;
      }
      buf[i] = bi;
      if constexpr (Nesterov) {
        d = gi + mu * bi;
      } else {
        d = bi;
      }
    }
    p[i] = pi - lr * d;
  }
}

template <class T>
void sgd_step(const TensorList& list, const SgdScalars& s, const GradScalars& gs, int threads) {
  const GradCoef<T> gc = grad_coef<T>(gs);
  const SgdCoef<T> c{static_cast<T>(s.lr), static_cast<T>(s.weight_decay), static_cast<T>(s.momentum),
                     static_cast<T>(s.one_minus_dampening)};
  // Without momentum, nesterov and first_step mean nothing: fold them to false (fewer instances).
  const bool mom = s.has_momentum;
  with_flag(gs.active, [&](auto pre) {
    with_flag(s.has_weight_decay, [&](auto wd) {
      with_flag(s.maximize, [&](auto maximize) {
        with_flag(mom, [&](auto momentum) {
          with_flag(mom && s.nesterov, [&](auto nesterov) {
            with_flag(mom && s.first_step, [&](auto first) {
              for_each_span<T>(list, threads, [&](int64_t k, int64_t b, int64_t e) {
                sgd_span<T, decltype(pre)::value, decltype(wd)::value, decltype(momentum)::value,
                         decltype(nesterov)::value, decltype(maximize)::value, decltype(first)::value>(
                    buffer<T>(list, k, 0, b), buffer<T>(list, k, 1, b), buffer<T>(list, k, 2, b), e - b, c, gc);
              });
            });
          });
        });
      });
    });
  });
}
