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

// Where a span's policies find their buffers: tensor k's nbuf buffer addresses, the span's first
// element, and the stochastic-rounding key of the call (zero when unused).
struct Where {
  void* const* bufs;
  int nbuf;
  int64_t begin;
  const u16* rnd;  // stochastic rounding: the random bits of element begin (else nullptr)
};

template <class T>
inline T* buffer_at(const Where& w, int r) {
  return (r < w.nbuf && w.bufs[r] != nullptr) ? static_cast<T*>(w.bufs[r]) + w.begin : nullptr;
}

// Storage T, loaded and stored as is (float32 and float64).
template <class T>
struct Plain {
  T* ptr;
  static Plain at(const Where& w, int r) { return Plain{buffer_at<T>(w, r)}; }
  T load(int64_t i) const { return ptr[i]; }
  void store(int64_t i, T x) const { ptr[i] = x; }
};

// bfloat16 storage (uint16 bits), computed in float32, stored with round-to-nearest-even.
struct Bf16 {
  using Own = Bf16;
  u16* ptr;
  static Bf16 at(const Where& w, int r) { return Bf16{buffer_at<u16>(w, r)}; }
  float load(int64_t i) const { return bf16_to_f32(ptr[i]); }
  void store(int64_t i, float x) const { ptr[i] = bf16_rne(x); }
};

// float16 storage (IEEE binary16 bits), computed in float32, stored with round-to-nearest-even.
struct F16 {
  using Own = F16;
  u16* ptr;
  static F16 at(const Where& w, int r) { return F16{buffer_at<u16>(w, r)}; }
  float load(int64_t i) const { return f16_to_f32(ptr[i]); }
  void store(int64_t i, float x) const { ptr[i] = f16_rne(x); }
};

// bfloat16 parameter written with stochastic rounding: the random bits of element i are those of
// its index inside its parameter, generated for the span's piece by fill_sr_bits (lowp.inl) before
// the loop (span() below), so any split of the work gives the same bits.
struct Bf16Sr {
  using Own = Bf16;
  u16* ptr;
  const u16* rnd;
  static Bf16Sr at(const Where& w, int r) { return Bf16Sr{buffer_at<u16>(w, r), w.rnd}; }
  float load(int64_t i) const { return bf16_to_f32(ptr[i]); }
  void store(int64_t i, float x) const { ptr[i] = bf16_sr(x, rnd[i]); }
};

// A low-precision parameter P with a float32 master in buffer X (after the algorithm's roles): the
// algorithm reads and updates the master; the parameter is written as its round-to-nearest-even.
template <class P, int X>
struct MasterF32 {
  using Own = typename P::Own;
  P param;
  float* master;
  static MasterF32 at(const Where& w, int r) { return MasterF32{P::at(w, r), buffer_at<float>(w, X)}; }
  float load(int64_t i) const { return master[i]; }
  void store(int64_t i, float x) const {
    master[i] = x;
    param.store(i, x);
  }
};

// The "split" master: a bfloat16 parameter and a uint16 trail in buffer X (lowp.inl's rule).
template <int X>
struct SplitBf16 {
  using Own = Bf16;
  u16* param;
  u16* trail;
  static SplitBf16 at(const Where& w, int r) { return SplitBf16{buffer_at<u16>(w, r), buffer_at<u16>(w, X)}; }
  float load(int64_t i) const { return split_decode(param[i], trail[i]); }
  void store(int64_t i, float x) const {
    const u32 u = split_master_bits(x);
    param[i] = bf16_rne(bits_f32(u));
    trail[i] = static_cast<u16>(u);
  }
};

// ---- the roles of one span: a typed pack of policies (no std::tuple in this translation unit) ----

template <int R, class... S>
struct Pack;

template <int R>
struct Pack<R> {
  explicit Pack(const Where&) {}
};

template <int R, class H, class... T>
struct Pack<R, H, T...> {
  H head;
  Pack<R + 1, T...> tail;
  // roles beyond the tensor's nbuf buffers (probe) get nullptr
  explicit Pack(const Where& w) : head(H::at(w, R)), tail(w) {}
};

template <int K, int R, class H, class... T>
inline const auto& role_at(const Pack<R, H, T...>& p) {
  if constexpr (K == R) {
    return p.head;
  } else {
    return role_at<K>(p.tail);
  }
}

// Whether every role of a pack is Plain<T> storage (the float32/float64 spans).
template <class P>
struct AllPlain {
  static constexpr bool value = false;
};
template <int R>
struct AllPlain<Pack<R>> {
  static constexpr bool value = true;
};
template <int R, class T, class... Rest>
struct AllPlain<Pack<R, Plain<T>, Rest...>> {
  static constexpr bool value = AllPlain<Pack<R + 1, Rest...>>::value;
};

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
  // cond ? a : b for the algorithms' selects (weight decay and SGD's first step, loop-invariant;
  // the amsgrad max, per element). Plain spans (float32/float64 storage) keep `?:`: GCC unswitches
  // the loop-invariant flags there, and the bit-mask select would cost the fp32 step up to 2x
  // (SGD with momentum). The low-precision spans' loop bodies are too large to be unswitched: there
  // a `?:` leaves a branch per element and the loop scalar, so they use the bit-mask choose().
  template <class T>
  static T pick(bool cond, T a, T b) {
    if constexpr (AllPlain<Roles>::value) {
      return cond ? a : b;
    } else {
      return choose(cond, a, b);
    }
  }
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
  SrKey sr;
};

// Everything a span calls is inlined into it (GCC/Clang `flatten`): with the low-precision layouts
// the translation unit is large enough that GCC's unit-growth limit would otherwise leave the
// policies' constructors and conversions as calls, and a loop with a call is not vectorized.
#if defined(__GNUC__)
#define FUSEDOPT_FLATTEN __attribute__((flatten))
#else
#define FUSEDOPT_FLATTEN
#endif

// Whether a span's parameter is written with stochastic rounding (role 0 is Bf16Sr).
template <class R>
struct SrParam {
  static constexpr bool value = false;
};
template <class... T>
struct SrParam<Pack<0, Bf16Sr, T...>> {
  static constexpr bool value = true;
};

// Stochastic rounding: random bits are generated for pieces of kSrPiece elements at a time.
constexpr int64_t kSrPiece = 1024;

template <class A, class C, class Roles, bool Pre, int V>
FUSEDOPT_FLATTEN void span(const void* ctx, const TensorList& list, int64_t k, int64_t b, int64_t e) noexcept {
  const Args<A, C>& args = *static_cast<const Args<A, C>*>(ctx);
  const typename A::template Coef<C> coef = args.coef;
  void* const* bufs = list.ptrs + k * list.nbuf;
  if constexpr (SrParam<Roles>::value) {
    alignas(64) u16 rnd[kSrPiece + 16];
    for (int64_t c = b; c < e; c += kSrPiece) {
      const int64_t n = e - c < kSrPiece ? e - c : kSrPiece;
      fill_sr_bits(args.sr, static_cast<u64>(c), n, rnd);
      const Element<C, Pre, Roles> el{Roles(Where{bufs, list.nbuf, c, rnd + (c & 7)}), args.gc};
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        A::template element<V>(coef, el, i);
      }
    }
  } else {
    const Element<C, Pre, Roles> el{Roles(Where{bufs, list.nbuf, b, nullptr}), args.gc};
    const int64_t n = e - b;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      A::template element<V>(coef, el, i);
    }
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
  const Args<A, T> args{typename A::template Coef<T>(s), grad_coef<T>(gs), SrKey{0, 0, 0, 0}};
  const SpanFn fn = pick_span<A, T, Roles, A::kVariants - 1>(A::variant(s), gs.active);
  for_each_span(list, threads, static_cast<int64_t>(sizeof(T)), fn, &args);
}

// A pass without gradient (EMA of weights, the bandwidth probe).
template <class A, class T>
void pass(const TensorList& list, const typename A::Scalars& s, int threads) {
  step<A, T>(list, s, GradScalars{1.0, 1.0, 1.0, false}, threads);
}

// ---- low-precision storage (issue 13): float32 arithmetic, roles stored as the call says ---------
//
// The layouts (LowpArgs, common/step_args.hpp): a bfloat16 parameter written with round-to-nearest-
// even, stochastic rounding, an fp32 master or the split master; a float16 parameter written with
// round-to-nearest-even or an fp32 master; gradients in the parameter's own dtype or float32,
// states float32 or the parameter's own dtype; and float32 parameters and gradients with bfloat16
// states. Each is one instance per algorithm variant (what changes memory traffic); the bindings
// refuse any other combination before calling (an unknown one does nothing here).

// Pack<0, P, G, S, S, ...>: the parameter, the gradient and kRoles-2 states.
template <class S, int N, class... Acc>
struct StatesAfter {
  using type = typename StatesAfter<S, N - 1, Acc..., S>::type;
};
template <class S, class... Acc>
struct StatesAfter<S, 0, Acc...> {
  using type = Pack<0, Acc...>;
};

template <class A, class P, class G, class S>
void lowp_run(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, const SrKey& key,
              int threads) {
  using Roles = typename StatesAfter<S, A::kRoles - 2, P, G>::type;
  const Args<A, float> args{typename A::template Coef<float>(s), grad_coef<float>(gs), key};
  const SpanFn fn = pick_span<A, float, Roles, A::kVariants - 1>(A::variant(s), gs.active);
  for_each_span(list, threads, 2, fn, &args);  // buffer 0 (the parameter) holds 2-byte elements
}

template <class A, class P>
void lowp_gs(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, const LowpArgs& a,
             const SrKey& key, int threads) {
  using O = typename P::Own;
  if (a.grad == kStoreF32) {
    if (a.state == kStoreF32) return lowp_run<A, P, Plain<float>, Plain<float>>(list, s, gs, key, threads);
    return lowp_run<A, P, Plain<float>, O>(list, s, gs, key, threads);
  }
  if (a.state == kStoreF32) return lowp_run<A, P, O, Plain<float>>(list, s, gs, key, threads);
  return lowp_run<A, P, O, O>(list, s, gs, key, threads);
}

template <class A>
void lowp_step(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, const LowpArgs& a,
               int threads) {
  const SrKey key{static_cast<u32>(a.seed), static_cast<u32>(a.seed >> 32), static_cast<u32>(a.step),
                  static_cast<u32>(a.step >> 32)};
  if (a.param == kStoreBf16) {
    if (a.write == kWriteRne) return lowp_gs<A, Bf16>(list, s, gs, a, key, threads);
    if (a.write == kWriteSr) return lowp_gs<A, Bf16Sr>(list, s, gs, a, key, threads);
    if (a.write == kWriteMaster) return lowp_gs<A, MasterF32<Bf16, A::kRoles>>(list, s, gs, a, key, threads);
    if (a.write == kWriteSplit) return lowp_gs<A, SplitBf16<A::kRoles>>(list, s, gs, a, key, threads);
  } else if (a.param == kStoreF16) {
    if (a.write == kWriteRne) return lowp_gs<A, F16>(list, s, gs, a, key, threads);
    if (a.write == kWriteMaster) return lowp_gs<A, MasterF32<F16, A::kRoles>>(list, s, gs, a, key, threads);
  } else if (a.param == kStoreF32 && a.grad == kStoreF32 && a.state == kStoreBf16 && a.write == kWriteRne) {
    using Roles = typename StatesAfter<Bf16, A::kRoles - 2, Plain<float>, Plain<float>>::type;
    const Args<A, float> args{typename A::template Coef<float>(s), grad_coef<float>(gs), key};
    const SpanFn fn = pick_span<A, float, Roles, A::kVariants - 1>(A::variant(s), gs.active);
    for_each_span(list, threads, 4, fn, &args);
  }
}
