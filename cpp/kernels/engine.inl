// The element-wise engine (included inside fusedopt::<isa>::(anonymous)): every algorithm's
// arithmetic is written once, for ONE element, against typed storage; this file turns it into
// the vectorized span loops that parallel.inl's driver runs.
//
// An algorithm is a struct (sgd.inl, adam.inl, lion.inl, ...) with
//   using Scalars = ...;                       its per-step values (common/step_args.hpp)
//   static constexpr int kRoles;               buffers per tensor (params, grads, states...)
//   static constexpr bool kGrad;               role 1 is a gradient (pre-processed by grad.inl)
//   static constexpr int kVariants;            compile-time variants (only what changes memory
//   static int variant(const Scalars&);        traffic: a state present or not), 0..kVariants-1
//   template <class C> struct Coef;            the scalars cast once to the compute type C
//   template <int V, class C, class E>
//   static void element(const Coef<C>&, const E& e, int64_t i);   element i: e.load(role, i),
//                                  e.grad(i), arithmetic in C, e.store(role, i, value)
// Everything else — flags that are exact IEEE identities (maximize as x*(+-1), decoupled decay by
// x*1, eps forms that add +0) and flags whose branch is a cheap per-element select (L2 weight
// decay, SGD's first step, torch_exact's lerp form) — is a runtime value in Coef, not an instance.
// The gradient pre-processing (a division per element when active) is the one compile-time
// switch every gradient algorithm has.
//
// Storage: each role is loaded and stored through a small policy (Plain<T> below: storage T,
// no conversion). The compute type C is the kernel's (float for float32 params, double for
// float64). A new storage type — bf16/fp16 params and grads with float32 master weights (issue
// 13; a store with stochastic rounding needs only the element's global index, which the policy
// gets as its base offset + i) or 8-bit block-quantized states (issue 14; a policy that
// dequantizes a block into a local float buffer before the loop and quantizes it after, with cuts
// aligned to its block size) — is a new policy and a new Roles layout in step()/pass(); no
// algorithm changes.
//
// Bitwise rules: each element is computed by the same sequence of IEEE operations in the vector
// body, the peeled head and the scalar tail (-ffp-contract=off, no reassociation: `omp simd`
// only removes the dependence analysis), so results are independent of ISA, thread count and
// alignment.

// (choose(), the branch-free select, is in select.inl)

template <int K>
struct Role {
  static constexpr int index = K;
};

// ---- storage policies --------------------------------------------------------------------------

// Storage type T, loaded and stored as is (float32 and float64 today).
template <class T>
struct Plain {
  T* ptr;
  static Plain at(void* base, int64_t begin) { return Plain{base == nullptr ? nullptr : static_cast<T*>(base) + begin}; }
  T load(int64_t i) const { return ptr[i]; }
  void store(int64_t i, T x) const { ptr[i] = x; }
};

// ---- the roles of one span: a typed pack of policies (no std::tuple in this translation unit) ----

template <int R, class... S>
struct Pack;

template <int R>
struct Pack<R> {
  Pack(void* const*, int, int64_t) {}
};

template <int R, class H, class... T>
struct Pack<R, H, T...> {
  H head;
  Pack<R + 1, T...> tail;
  // bufs: the tensor's nbuf buffer addresses; roles beyond nbuf (probe) get nullptr
  Pack(void* const* bufs, int nbuf, int64_t begin) : head(H::at(R < nbuf ? bufs[R] : nullptr, begin)), tail(bufs, nbuf, begin) {}
};

template <int K, int R, class H, class... T>
inline const auto& role_at(const Pack<R, H, T...>& p) {
  if constexpr (K == R) {
    return p.head;
  } else {
    return role_at<K>(p.tail);
  }
}

// N roles of the same storage S.
template <class S, int N, class... Acc>
struct Uniform {
  using type = typename Uniform<S, N - 1, S, Acc...>::type;
};
template <class S, class... Acc>
struct Uniform<S, 0, Acc...> {
  using type = Pack<0, Acc...>;
};

// What an algorithm's element() sees: every role, loaded and stored in the compute type C. Made
// once per span, outside the loop (an aggregate made inside an `omp simd` body becomes a per-lane
// array in memory, which stops GCC from vectorizing).
template <class C, bool Pre, class Roles>
struct Element {
  Roles roles;
  GradCoef<C> gc;
  template <int K>
  C load(Role<K>, int64_t i) const {
    return static_cast<C>(role_at<K>(roles).load(i));
  }
  template <int K>
  void store(Role<K>, int64_t i, C x) const {
    role_at<K>(roles).store(i, x);
  }
  C grad(int64_t i) const { return load_grad<Pre>(load(Role<1>{}, i), gc); }  // grad.inl
};

// ---- span loops and their selection --------------------------------------------------------------

template <class A, class C>
struct Args {
  typename A::template Coef<C> coef;
  GradCoef<C> gc;
};

template <class A, class C, class Roles, bool Pre, int V>
void span(const void* ctx, const TensorList& list, int64_t k, int64_t b, int64_t e) noexcept {
  const Args<A, C>& args = *static_cast<const Args<A, C>*>(ctx);
  const typename A::template Coef<C> coef = args.coef;
  const Element<C, Pre, Roles> el{Roles(list.ptrs + k * list.nbuf, list.nbuf, b), args.gc};
  const int64_t n = e - b;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    A::template element<V>(coef, el, i);
  }
}

template <class A, class C, class Roles, int V>
SpanFn pick_span(int variant, bool pre) {
  if constexpr (V < 0) {
    return nullptr;  // unreachable: variant() returns 0..kVariants-1
  } else {
    if (variant == V) {
      if constexpr (A::kGrad) {
        if (pre) return &span<A, C, Roles, true, V>;
      }
      return &span<A, C, Roles, false, V>;
    }
    return pick_span<A, C, Roles, V - 1>(variant, pre);
  }
}

// One step of algorithm A over float32 or float64 arrays (T is storage and compute type).
template <class A, class T>
void step(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, int threads) {
  using Roles = typename Uniform<Plain<T>, A::kRoles>::type;
  const Args<A, T> args{typename A::template Coef<T>(s), grad_coef<T>(gs)};
  const SpanFn fn = pick_span<A, T, Roles, A::kVariants - 1>(A::variant(s), gs.active);
  for_each_span(list, threads, static_cast<int64_t>(sizeof(T)), fn, &args);
}

// A pass without gradient (EMA of weights, the bandwidth probe).
template <class A, class T>
void pass(const TensorList& list, const typename A::Scalars& s, int threads) {
  step<A, T>(list, s, GradScalars{1.0, 1.0, 1.0, false}, threads);
}
