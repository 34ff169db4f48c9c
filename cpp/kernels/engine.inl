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
// float64). Other storage — bfloat16/float16 parameters, gradients and states, fp32 or "split"
// masters, stochastic rounding (issue 13) — is converted around the float32 span, a chunk of
// kChunk elements at a time (lowp_span below): the chunk's low-precision roles are decoded into
// local float32 buffers (L1-resident), the algorithm's own float32 span runs on them, and the
// written roles are encoded back. No algorithm changes, one compiled span per algorithm variant,
// and the conversions are tight loops that vectorize on every ISA. 8-bit block-quantized states
// (issue 14) are the same: a decode and an encode per block, chunks aligned to the block size
// (an algorithm names its never-negative states, kNonNegative, which use the unsigned code book).
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
inline const auto& role_at(const Pack<R, H, T...>& p) noexcept {
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

// ---- low-precision storage (issue 13): float32 arithmetic, roles stored as the call says ---------
//
// The layouts (LowpArgs, common/step_args.hpp): a bfloat16 parameter written with round-to-nearest-
// even, stochastic rounding, an fp32 master or the split master; a float16 parameter written with
// round-to-nearest-even or an fp32 master; gradients in the parameter's own dtype or float32,
// states float32 or the parameter's own dtype; and float32 parameters and gradients with bfloat16
// states. The bindings refuse any other combination before calling.
//
// A chunk of a span: every present role is made a float32 array of the chunk — float32 storage in
// place, the fp32 master in place (the algorithm updates the master itself), anything else decoded
// into a local buffer — then the algorithm's float32 span runs over the chunk, then every written
// role (all but the gradient) that is not float32 storage is encoded back: states with round-to-
// nearest-even, the parameter as the call says (RNE; stochastic rounding with the random bits of
// the elements' indices inside the parameter; RNE of the updated master; the split pair).

// Elements per chunk: the local buffers (kMaxLowpRoles float32 arrays) stay in L1.
constexpr int64_t kChunk = 512;
constexpr int kMaxLowpRoles = 6;  // the most roles of any algorithm (RMSprop: 5, Adam: 5), + 1

#if defined(__GNUC__) || defined(__clang__)
#define FUSEDOPT_PREFETCH(addr) __builtin_prefetch((addr), 1, 3)
#elif defined(_M_X64) || defined(_M_IX86)
#define FUSEDOPT_PREFETCH(addr) _mm_prefetch(static_cast<const char*>(addr), _MM_HINT_T0)
#else
#define FUSEDOPT_PREFETCH(addr) ((void)(addr))
#endif

struct LowpCtx {
  SpanFn compute;    // the algorithm's float32 span (the same function the float32 step runs)
  const void* args;  // its Args<A, float>
  int roles;         // A::kRoles; the master or trail is buffer `roles`
  unsigned nonneg;   // A::kNonNegative: state roles (bits) that use the unsigned code book
  LowpArgs lowp;
  SrKey key;
};

static_assert(kChunk % kQ8Block == 0, "a chunk of an 8-bit state is whole blocks");

// 8-bit state role r (>= 2): its code book and its absmax buffer (after the master's slot).
inline const Q8Map& q8_of(const LowpCtx& c, int r) noexcept {
  return (c.nonneg >> r) & 1u ? *c.lowp.q8_unsigned : *c.lowp.q8_signed;
}
inline float* absmax_of(const LowpCtx& c, void* const* bufs, int r, int64_t at) noexcept {
  return static_cast<float*>(bufs[c.roles + 1 + (r - 2)]) + at / kQ8Block;
}

inline void decode_n(int kind, const void* src, float* dst, int64_t n) noexcept {
  if (kind == kStoreBf16) {
    bf16_decode_n(static_cast<const u16*>(src), dst, n);
  } else {
    f16_decode_n(static_cast<const u16*>(src), dst, n);
  }
}

inline void encode_n(int kind, const float* src, void* dst, int64_t n) noexcept {
  if (kind == kStoreBf16) {
    bf16_rne_n(src, static_cast<u16*>(dst), n);
  } else {
    f16_rne_n(src, static_cast<u16*>(dst), n);
  }
}

// Bytes per element of buffer r of a low-precision call (the master or trail is buffer `roles`).
inline int64_t lowp_size(const LowpCtx& c, int r) noexcept {
  if (r == c.roles) return c.lowp.write == kWriteMaster ? 4 : 2;
  const int kind = r == 0 ? c.lowp.param : (r == 1 ? c.lowp.grad : c.lowp.state);
  return kind == kStoreF32 ? 4 : (kind == kStoreQ8 ? 1 : 2);
}

// Asks for elements [from, to) of every buffer of the tensor ahead of use. The chunk's passes touch
// each buffer in a burst (a decode, the float32 span, an encode) rather than all buffers in one
// loop, which the hardware prefetchers follow poorly: measured 2.7x slower than its bounds at 2^22
// elements before this. A prefetch never faults; only addresses inside the span are asked for.
inline void lowp_prefetch(const LowpCtx& c, void* const* bufs, int nbuf, int64_t from, int64_t to) noexcept {
  if (to <= from) return;
  for (int r = 0; r < nbuf && r <= c.roles; ++r) {
    if (bufs[r] == nullptr) continue;
    const int64_t size = lowp_size(c, r);
    const char* p = static_cast<const char*>(bufs[r]) + from * size;
    const int64_t bytes = (to - from) * size;
    for (int64_t off = 0; off < bytes; off += 64) FUSEDOPT_PREFETCH(p + off);
  }
}

void lowp_span(const void* ctx, const TensorList& list, int64_t k, int64_t b, int64_t e) noexcept {
  const LowpCtx& c = *static_cast<const LowpCtx*>(ctx);
  const LowpArgs& a = c.lowp;
  void* const* bufs = list.ptrs + k * list.nbuf;
  // buffer r at r * (kChunk + 48) floats: no two at the same address modulo 4096 (a load that
  // matches an earlier store's address bits 0-11 waits for it: 4K aliasing)
  alignas(64) float tmp[kMaxLowpRoles][kChunk + 48];
  alignas(64) u16 rnd[kChunk + 16];
  void* local[kMaxLowpRoles];
  for (int64_t at = b; at < e; at += kChunk) {
    const int64_t n = e - at < kChunk ? e - at : kChunk;
    lowp_prefetch(c, bufs, list.nbuf, at + kChunk, e - at - kChunk < kChunk ? e : at + 2 * kChunk);  // the next chunk
    for (int r = 0; r < c.roles; ++r) {
      const int kind = r == 0 ? a.param : (r == 1 ? a.grad : a.state);
      local[r] = nullptr;
      if (bufs[r] == nullptr) continue;
      if (r == 0 && a.write == kWriteMaster) {
        local[0] = static_cast<float*>(bufs[c.roles]) + at;
      } else if (r == 0 && a.write == kWriteSplit) {
        split_decode_n(static_cast<const u16*>(bufs[0]) + at, static_cast<const u16*>(bufs[c.roles]) + at, tmp[0], n);
        local[0] = tmp[0];
      } else if (kind == kStoreF32) {
        local[r] = static_cast<float*>(bufs[r]) + at;
      } else if (kind == kStoreQ8) {
        q8_decode_n(q8_of(c, r), static_cast<const u8*>(bufs[r]) + at, absmax_of(c, bufs, r, at), tmp[r], n);
        local[r] = tmp[r];
      } else {
        decode_n(kind, static_cast<const u16*>(bufs[r]) + at, tmp[r], n);
        local[r] = tmp[r];
      }
    }
    const TensorList chunk{local, &n, 1, c.roles};
    c.compute(c.args, chunk, 0, 0, n);
    for (int r = 0; r < c.roles; ++r) {
      if (r == 1 || bufs[r] == nullptr) continue;
      const int kind = r == 0 ? a.param : a.state;
      if (r >= 2 && kind == kStoreQ8) {
        q8_encode_n(q8_of(c, r), tmp[r], static_cast<u8*>(bufs[r]) + at, absmax_of(c, bufs, r, at), n);
        continue;
      }
      u16* dst = static_cast<u16*>(bufs[r]) + at;
      if (r == 0 && a.write == kWriteMaster) {
        encode_n(kind, static_cast<const float*>(local[0]), dst, n);
      } else if (r == 0 && a.write == kWriteSplit) {
        split_encode_n(tmp[0], dst, static_cast<u16*>(bufs[c.roles]) + at, n);
      } else if (r == 0 && a.write == kWriteSr) {
        const u64 pos = static_cast<u64>(at) + (a.sr_offsets != nullptr ? a.sr_offsets[k] : 0);
        fill_sr_bits(c.key, pos, n, rnd);
        bf16_sr_n(tmp[0], rnd + (pos & 7), dst, n);
      } else if (kind != kStoreF32) {
        encode_n(kind, tmp[r], dst, n);
      }
    }
  }
}

template <class A>
void lowp_step(const TensorList& list, const typename A::Scalars& s, const GradScalars& gs, const LowpArgs& a,
               int threads) {
  static_assert(A::kRoles < kMaxLowpRoles, "lowp_span's buffers: raise kMaxLowpRoles");
  using Roles = typename Uniform<Plain<float>, A::kRoles>::type;
  const Args<A, float> args{typename A::template Coef<float>(s), grad_coef<float>(gs)};
  const SpanFn fn = pick_span<A, float, Roles, A::kVariants - 1>(A::variant(s), gs.active);
  const SrKey key{static_cast<u32>(a.seed), static_cast<u32>(a.seed >> 32), static_cast<u32>(a.step),
                  static_cast<u32>(a.step >> 32)};
  const LowpCtx ctx{fn, &args, A::kRoles, A::kNonNegative, a, key};
  for_each_span(list, threads, a.param == kStoreF32 ? 4 : 2, &lowp_span, &ctx, a.state == kStoreQ8 ? kQ8Block : 0);
}
