// Low-precision storage (issue 13), included inside fusedopt::<isa>::(anonymous) before engine.inl:
// exact conversions between float32 and bfloat16 / float16, the counter-based generator
// (Philox4x32-10) and stochastic rounding. Spec: python/fusedopt/reference.py (bf16_rne, f16_rne,
// f16_to_f32, philox4x32, sr_bits, bf16_sr, split_encode/split_decode).
//
// Every conversion here is integer arithmetic on the bit patterns (plus one exact int->float
// conversion and one exact multiplication by a power of two for float16 subnormals), written as
// per-element selects so `omp simd` vectorizes it on every ISA and every ISA gives the same bits.
// Nothing depends on the floating-point control state: no rounding by the FPU, no flush of
// subnormals (an fp16 subnormal is converted exactly whatever MXCSR's FTZ/DAZ say).
//
// NaN: float32 -> bfloat16 gives ml_dtypes' quiet NaN of the same sign (0x7FC0 | sign), float32 ->
// float16 gives sign | 0x7E00 | (the top 10 payload bits) (a quiet NaN, as x86's F16C
// VCVTPS2PH), float16 -> float32 gives sign | 0x7FC00000 | (payload << 13) (quieted, as F16C's
// VCVTPH2PS); bfloat16 -> float32 keeps every bit.

using u16 = std::uint16_t;
using u32 = std::uint32_t;
using u64 = std::uint64_t;

inline u32 f32_bits(float x) { return __builtin_bit_cast(u32, x); }

// cond ? a : b on bit patterns, by masks (GCC may otherwise sink a floating-point operand into a
// branch that it then cannot if-convert, and the loop stays scalar).
inline u32 sel(bool cond, u32 a, u32 b) noexcept {
  const u32 mask = 0u - static_cast<u32>(cond);
  return (a & mask) | (b & ~mask);
}
inline float bits_f32(u32 u) { return __builtin_bit_cast(float, u); }

inline float bf16_to_f32(u16 h) { return bits_f32(static_cast<u32>(h) << 16); }

// All ones where float32 bits u are a NaN (a signed compare: u & 0x7FFFFFFF < 2^31).
inline u32 f32_nan_mask(u32 u) noexcept {
  return 0u - static_cast<u32>(static_cast<std::int32_t>(u & 0x7FFFFFFFu) > 0x7F800000);
}

// The bfloat16 of float32 bits u rounded to the word `rounded` (its high half), or for a NaN u
// ml_dtypes' quiet NaN of its sign (0x7FC0 | sign). The select is made on the 32-bit words before
// the shift and the one narrowing (selecting 16-bit values, GCC narrowed three vectors per store).
inline u16 bf16_from_word(u32 u, u32 rounded) noexcept {
  const u32 nan = (u & 0x80000000u) | 0x7FC00000u;
  const u32 m = f32_nan_mask(u);
  return static_cast<u16>(((nan & m) | (rounded & ~m)) >> 16);
}
// Round to nearest, ties to even: add 0x7FFF plus the kept part's lowest bit, truncate. Exact for
// every finite value and +-inf (the largest finite values round to inf, as IEEE says).
inline u16 bf16_rne(float x) noexcept {
  const u32 u = f32_bits(x);
  return bf16_from_word(u, u + 0x7FFFu + ((u >> 16) & 1u));
}

// Stochastic rounding with 16 random bits r: add r to the 16 bits that are dropped, truncate.
// The result rounds away from zero with probability (dropped bits)/2^16: unbiased.
inline u16 bf16_sr(float x, u32 r16) noexcept {
  const u32 u = f32_bits(x);
  return bf16_from_word(u, u + r16);
}

// float32 -> float16, round to nearest, ties to even; subnormal results exact (no flush).
inline u16 f16_rne(float x) noexcept {
  const u32 u = f32_bits(x);
  const u32 sign = (u >> 16) & 0x8000u;
  const u32 a = u & 0x7FFFFFFFu;
  // normal results (|x| >= 2^-14): drop 13 mantissa bits, re-bias the exponent (127-15 = 112)
  const u32 normal = ((a + 0xFFFu + ((a >> 13) & 1u)) >> 13) - (112u << 10);
  // subnormal results: m * 2^(e-126) units of 2^-24, rounded to nearest even
  const u32 e = a >> 23;
  const u32 m = (a & 0x7FFFFFu) | 0x800000u;
  u32 s = e > 112u ? 14u : 126u - e;  // 14..126 where used (a < 2^-14); shifts stay in 1..31
  s = s > 31u ? 31u : s;
  const u32 q = m >> s;
  const u32 rem = m & ((1u << s) - 1u);
  const u32 half = 1u << (s - 1u);
  const u32 up = static_cast<u32>(rem > half) | (static_cast<u32>(rem == half) & q);  // no short-circuit
  const u32 sub = q + (up & 1u);
  const u32 nan = 0x7E00u | ((a >> 13) & 0x3FFu);
  u32 h = sel(a < 0x38800000u, sub, normal);
  h = sel(a >= 0x477FF000u, 0x7C00u, h);  // 65520 and above round to inf
  h = sel(a > 0x7F800000u, nan, h);
  return static_cast<u16>(sign | h);
}

// float16 -> float32, exact.
inline float f16_to_f32(u16 h16) noexcept {
  const u32 h = h16;
  const u32 sign = (h & 0x8000u) << 16;
  const u32 e = (h >> 10) & 0x1Fu;
  const u32 m = h & 0x3FFu;
  const u32 normal = ((e + 112u) << 23) | (m << 13);
  const u32 special = 0x7F800000u | (m << 13) | sel(m != 0u, 0x400000u, 0u);
  // subnormal (and zero): m * 2^-24, exact (m < 2^10; the product is a normal float32 or 0)
  const u32 sub = f32_bits(static_cast<float>(static_cast<std::int32_t>(m)) * 0x1p-24f);
  const u32 mag = sel(e == 0u, sub, sel(e == 31u, special, normal));
  return bits_f32(sign | mag);
}

// ---- Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
// SC'11): 10 rounds on a 128-bit counter with a 64-bit key. ---------------------------------------

inline void philox4x32_10(u32& c0, u32& c1, u32& c2, u32& c3, u32 k0, u32 k1) noexcept {
#pragma GCC unroll 10
  for (int r = 0; r < 10; ++r) {
    const u64 p0 = static_cast<u64>(0xD2511F53u) * c0;
    const u64 p1 = static_cast<u64>(0xCD9E8D57u) * c2;
    const u32 hi0 = static_cast<u32>(p0 >> 32), lo0 = static_cast<u32>(p0);
    const u32 hi1 = static_cast<u32>(p1 >> 32), lo1 = static_cast<u32>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

// The 16 random bits of element `index` of a parameter at (seed, step): one Philox block serves 8
// consecutive elements. Counter = (index>>3 low 32 bits, index>>3 high 32 bits, step low, step
// high), key = (seed low, seed high); element index takes 16-bit half (index & 1) (0: low half) of
// output word (index & 7) >> 1.
struct SrKey {
  u32 k0, k1, s0, s1;
};

// The random bits of elements [begin, begin + n) of a parameter, written from out[begin & 7] on
// (out holds n + 16 values: whole Philox blocks are generated, one per 8 elements).
#if defined(__AVX2__)
// The 32x32 -> 64-bit products of 8 lanes as their high and low words.
inline void mulhilo8(__m256i a, __m256i m, __m256i& hi, __m256i& lo) noexcept {
  const __m256i pe = _mm256_mul_epu32(a, m);                         // lanes 0, 2, 4, 6
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);  // lanes 1, 3, 5, 7
  lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}
#endif

#if defined(__GNUC__)
__attribute__((noinline))  // one copy per ISA, called once per piece (not flattened into spans)
#endif
void fill_sr_bits(const SrKey& key, u64 begin, int64_t n, u16* out) noexcept {
  const u64 j0 = begin >> 3;
  const int64_t blocks = static_cast<int64_t>(((begin + static_cast<u64>(n) + 7) >> 3) - j0);
  const u32 j0_lo = static_cast<u32>(j0), j0_hi = static_cast<u32>(j0 >> 32);
  int64_t b = 0;
#if defined(__AVX2__)
  // 8 blocks at a time in 32-bit lanes (GCC's own vectorization of the loop below widens to 64-bit
  // lanes and extracts the 16-bit outputs one by one: 2.5x slower). Same bits.
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i lo0 = _mm256_set1_epi32(static_cast<int>(j0_lo));
  // the round keys, broadcast once per call (not once per 8 blocks)
  __m256i rk0[10], rk1[10];
  {
    u32 k0 = key.k0, k1 = key.k1;
    for (int r = 0; r < 10; ++r) {
      rk0[r] = _mm256_set1_epi32(static_cast<int>(k0));
      rk1[r] = _mm256_set1_epi32(static_cast<int>(k1));
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
  }
  for (; b + 8 <= blocks; b += 8) {
    __m256i c0 = _mm256_add_epi32(lo0, _mm256_add_epi32(lane, _mm256_set1_epi32(static_cast<int>(b))));
    // the counter's high word gets the carry where the low word wrapped (c0 < j0_lo, unsigned)
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo0, sign), _mm256_xor_si256(c0, sign));
    __m256i c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(j0_hi)), wrapped);
    __m256i c2 = _mm256_set1_epi32(static_cast<int>(key.s0));
    __m256i c3 = _mm256_set1_epi32(static_cast<int>(key.s1));
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      __m256i hi0, lw0, hi1, lw1;
      mulhilo8(c0, m0, hi0, lw0);
      mulhilo8(c2, m1, hi1, lw1);
      c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), rk0[r]);
      c1 = lw1;
      c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), rk1[r]);
      c3 = lw0;
    }
    // transpose: block b + j's words (c0[j], c1[j], c2[j], c3[j]) go to out + 8 (b + j)
    const __m256i t0 = _mm256_unpacklo_epi32(c0, c1), t1 = _mm256_unpackhi_epi32(c0, c1);
    const __m256i t2 = _mm256_unpacklo_epi32(c2, c3), t3 = _mm256_unpackhi_epi32(c2, c3);
    const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);  // blocks 0|4, 1|5
    const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);  // blocks 2|6, 3|7
    u16* o = out + 8 * b;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_permute2x128_si256(u0, u1, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 16), _mm256_permute2x128_si256(u2, u3, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32), _mm256_permute2x128_si256(u0, u1, 0x31));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 48), _mm256_permute2x128_si256(u2, u3, 0x31));
  }
#endif
  // (scalar: on SSE2 faster than GCC's vectorization of it, 2480 vs 3240 cycles per 1024 elements)
  for (; b < blocks; ++b) {
    const u32 lo = j0_lo + static_cast<u32>(b);
    u32 c0 = lo, c1 = j0_hi + static_cast<u32>(lo < j0_lo), c2 = key.s0, c3 = key.s1;
    philox4x32_10(c0, c1, c2, c3, key.k0, key.k1);
    u16* o = out + 8 * b;
    o[0] = static_cast<u16>(c0), o[1] = static_cast<u16>(c0 >> 16);
    o[2] = static_cast<u16>(c1), o[3] = static_cast<u16>(c1 >> 16);
    o[4] = static_cast<u16>(c2), o[5] = static_cast<u16>(c2 >> 16);
    o[6] = static_cast<u16>(c3), o[7] = static_cast<u16>(c3 >> 16);
  }
}

// ---- the "split" master: bf16 parameter + uint16 trail ------------------------------------------
// The parameter is always round-to-nearest-even of the stored master; the trail is the master's low
// 16 bits. Decoding: the master's high half is the parameter, minus 1 when the trail is above
// 0x8000 (RNE rounded the high half up). A tie (trail exactly 0x8000) decodes to "not rounded up",
// which is right when the high half is even; a master with an odd high half and low half 0x8000 is
// therefore stored as the next float32 away from zero (low half 0x8001): its parameter is the same
// (RNE rounds it up either way), and the master moves by one float32 ulp (2^-24 relative).
inline float split_decode(u16 param, u16 trail) noexcept {
  const u32 hi = static_cast<u32>(param) - static_cast<u32>(trail > 0x8000u);
  return bits_f32((hi << 16) | trail);
}

inline u32 split_master_bits(float x) noexcept {
  const u32 u = f32_bits(x);
  return u + static_cast<u32>((u & 0x1FFFFu) == 0x18000u);  // odd high half, low half 0x8000
}

// ---- the conversions of a chunk (engine.inl's lowp_span): tight loops that vectorize -------------

#if defined(__AVX2__)
// 8 float32 bit patterns -> their bfloat16 words (in the low halves of the 32-bit lanes) rounded
// to the words `rounded`, NaNs to ml_dtypes' quiet NaN: bf16_from_word on 8 lanes.
inline __m256i bf16_words8(__m256i u, __m256i rounded) noexcept {
  const __m256i abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i nan_mask = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F800000));
  const __m256i nan = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0x80000000u))),
                                      _mm256_set1_epi32(0x7FC00000));
  return _mm256_srli_epi32(_mm256_blendv_epi8(rounded, nan, nan_mask), 16);
}
inline __m256i bf16_rne_words8(__m256i u) noexcept {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return bf16_words8(u, _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb));
}
// 16 words (two vectors of 8 32-bit lanes, each < 2^16) stored as 16 uint16 in order
inline void store_words16(u16* out, __m256i lo, __m256i hi) noexcept {
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), packed);
}
inline __m256i load_u16x8(const u16* in) noexcept {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in)));
}
#endif

// The loops below: explicit AVX2 (also on AVX-512: 16-bit narrowing is what GCC vectorizes
// poorly here), then the scalar form of the same integer operations for the rest and elsewhere.
inline void bf16_decode_n(const u16* __restrict in, float* __restrict out, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_slli_epi32(load_u16x8(in + i), 16));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = bf16_to_f32(in[j]);
}

// The AVX2 loops first round without the NaN rule (2 of the 5 operations a NaN-safe store needs per
// vector), noting whether any input was a NaN; when one was, the whole range is stored again with
// the NaN rule. The bits stored in the end are the same either way (no other thread reads them).
#if defined(__AVX2__)
inline __m256i nan_lanes8(__m256 x) { return _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)); }
inline __m256i bf16_rne_finite8(__m256i u) noexcept {
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
}
#endif

inline void bf16_rne_n(const float* __restrict in, u16* __restrict out, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__AVX2__)
  __m256i nan = _mm256_setzero_si256();
  for (; i + 16 <= n; i += 16) {
    const __m256 xa = _mm256_loadu_ps(in + i), xb = _mm256_loadu_ps(in + i + 8);
    nan = _mm256_or_si256(nan, _mm256_or_si256(nan_lanes8(xa), nan_lanes8(xb)));
    const __m256i a = bf16_rne_finite8(_mm256_castps_si256(xa));
    const __m256i b = bf16_rne_finite8(_mm256_castps_si256(xb));
    store_words16(out + i, a, b);
  }
  if (!_mm256_testz_si256(nan, nan)) {
    for (i = 0; i + 16 <= n; i += 16) {
      const __m256i a = bf16_rne_words8(_mm256_castps_si256(_mm256_loadu_ps(in + i)));
      const __m256i b = bf16_rne_words8(_mm256_castps_si256(_mm256_loadu_ps(in + i + 8)));
      store_words16(out + i, a, b);
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = bf16_rne(in[j]);
}

// rnd: the random bits of elements 0..n-1 (fill_sr_bits' output from its element begin & 7)
inline void bf16_sr_n(const float* __restrict in, const u16* __restrict rnd, u16* __restrict out, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__AVX2__)
  __m256i nan = _mm256_setzero_si256();
  for (; i + 16 <= n; i += 16) {
    const __m256 xa = _mm256_loadu_ps(in + i), xb = _mm256_loadu_ps(in + i + 8);
    nan = _mm256_or_si256(nan, _mm256_or_si256(nan_lanes8(xa), nan_lanes8(xb)));
    const __m256i a = _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(xa), load_u16x8(rnd + i)), 16);
    const __m256i b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(xb), load_u16x8(rnd + i + 8)), 16);
    store_words16(out + i, a, b);
  }
  if (!_mm256_testz_si256(nan, nan)) {
    for (i = 0; i + 16 <= n; i += 16) {
      const __m256i ua = _mm256_castps_si256(_mm256_loadu_ps(in + i));
      const __m256i ub = _mm256_castps_si256(_mm256_loadu_ps(in + i + 8));
      const __m256i a = bf16_words8(ua, _mm256_add_epi32(ua, load_u16x8(rnd + i)));
      const __m256i b = bf16_words8(ub, _mm256_add_epi32(ub, load_u16x8(rnd + i + 8)));
      store_words16(out + i, a, b);
    }
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = bf16_sr(in[j], rnd[j]);
}

inline void split_decode_n(const u16* __restrict param, const u16* __restrict trail, float* __restrict out,
                           int64_t n) noexcept {
  int64_t i = 0;
#if defined(__AVX2__)
  for (; i + 8 <= n; i += 8) {
    const __m256i p = load_u16x8(param + i), t = load_u16x8(trail + i);
    const __m256i up = _mm256_cmpgt_epi32(t, _mm256_set1_epi32(0x8000));  // -1 where RNE rounded up
    const __m256i hi = _mm256_add_epi32(p, up);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_or_si256(_mm256_slli_epi32(hi, 16), t));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = split_decode(param[j], trail[j]);
}

inline void split_encode_n(const float* __restrict in, u16* __restrict param, u16* __restrict trail, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__AVX2__)
  // as bf16_rne_n: without the NaN rule, noting NaNs; the exact loop below redoes the range if any
  __m256i nan = _mm256_setzero_si256();
  const __m256i low17 = _mm256_set1_epi32(0x1FFFF), tie = _mm256_set1_epi32(0x18000);
  const __m256i low16 = _mm256_set1_epi32(0xFFFF);
  for (; i + 16 <= n; i += 16) {
    const __m256 xa = _mm256_loadu_ps(in + i), xb = _mm256_loadu_ps(in + i + 8);
    nan = _mm256_or_si256(nan, _mm256_or_si256(nan_lanes8(xa), nan_lanes8(xb)));
    __m256i ua = _mm256_castps_si256(xa), ub = _mm256_castps_si256(xb);
    // split_master_bits: + 1 where the high half is odd and the low half is 0x8000
    ua = _mm256_sub_epi32(ua, _mm256_cmpeq_epi32(_mm256_and_si256(ua, low17), tie));
    ub = _mm256_sub_epi32(ub, _mm256_cmpeq_epi32(_mm256_and_si256(ub, low17), tie));
    store_words16(param + i, bf16_rne_finite8(ua), bf16_rne_finite8(ub));
    store_words16(trail + i, _mm256_and_si256(ua, low16), _mm256_and_si256(ub, low16));
  }
  if (!_mm256_testz_si256(nan, nan)) i = 0;
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) {
    const u32 u = split_master_bits(in[j]);
    param[j] = bf16_rne(bits_f32(u));
    trail[j] = static_cast<u16>(u);
  }
}

// float16: F16C's VCVTPH2PS / VCVTPS2PH (immediate round-to-nearest-even, whatever MXCSR says) where
// the ISA has them, the exact integer conversions above elsewhere and for the last n % 8 elements;
// both give the same bits for every input (tests/test_lowp.py runs all 2^16 float16 values and the
// float32 values around every float16 rounding boundary through each ISA). F16C ignores MXCSR's
// DAZ for float16 inputs and never flushes a float16 subnormal result; a float32 subnormal input
// rounds to a signed zero either way.
inline void f16_decode_n(const u16* __restrict in, float* __restrict out, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = f16_to_f32(in[j]);
}

inline void f16_rne_n(const float* __restrict in, u16* __restrict out, int64_t n) noexcept {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) out[j] = f16_rne(in[j]);
}

// ---- 8-bit block-quantized states (issue 14; the format: common/q8.hpp; spec: reference.py's
// q8_decode / q8_encode) ----------------------------------------------------------------------------

using u8 = std::uint8_t;

#if defined(__AVX2__)
// table[i0..i7] as one vector, by scalar loads (measured on AMD Zen 1: 0.55 ns per element, a
// VGATHERDPS 1.13 ns).
inline __m256 lookup8(const float* table, u32 i0, u32 i1, u32 i2, u32 i3, u32 i4, u32 i5, u32 i6, u32 i7) noexcept {
  __m128 lo = _mm_load_ss(table + i0);
  lo = _mm_insert_ps(lo, _mm_load_ss(table + i1), 0x10);
  lo = _mm_insert_ps(lo, _mm_load_ss(table + i2), 0x20);
  lo = _mm_insert_ps(lo, _mm_load_ss(table + i3), 0x30);
  __m128 hi = _mm_load_ss(table + i4);
  hi = _mm_insert_ps(hi, _mm_load_ss(table + i5), 0x10);
  hi = _mm_insert_ps(hi, _mm_load_ss(table + i6), 0x20);
  hi = _mm_insert_ps(hi, _mm_load_ss(table + i7), 0x30);
  return _mm256_set_m128(hi, lo);
}

// The 8 bytes whose bit is set in `mask` (bit k -> byte k) hold 1, the others 0.
struct ByteSpread {
  u64 word[256];
};
constexpr ByteSpread make_byte_spread() {
  ByteSpread s{};
  for (int m = 0; m < 256; ++m) {
    u64 w = 0;
    for (int b = 0; b < 8; ++b) w |= static_cast<u64>((m >> b) & 1) << (8 * b);
    s.word[m] = w;
  }
  return s;
}
constexpr ByteSpread kByteSpread = make_byte_spread();
#endif

// Elements [0, n) of a state from its codes and the absmax of their blocks (codes[0] starts a block).
inline void q8_decode_n(const Q8Map& m, const u8* __restrict codes, const float* __restrict absmax,
                        float* __restrict out, int64_t n) noexcept {
  const float* value = m.value;
  for (int64_t at = 0; at < n; at += kQ8Block) {
    const int64_t len = n - at < kQ8Block ? n - at : kQ8Block;
    const float a = absmax[at / kQ8Block];
    const u8* c = codes + at;
    float* o = out + at;
    int64_t i = 0;
#if defined(__AVX2__)
    // 8 at a time: 8 scalar loads inserted into one vector (on AMD Zen 1 a gather is 2x slower). Same bits.
    const __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= len; i += 8) {
      const __m256 v = lookup8(value, c[i], c[i + 1], c[i + 2], c[i + 3], c[i + 4], c[i + 5], c[i + 6], c[i + 7]);
      _mm256_storeu_ps(o + i, _mm256_mul_ps(v, va));
    }
#endif
    for (; i < len; ++i) o[i] = value[c[i]] * a;
  }
}

// The code of q (common/q8.hpp): its bucket's entry, and the low 16 bits of q against the split.
inline u32 q8_bucket(u32 u) noexcept {
  const std::int32_t d = static_cast<std::int32_t>((u & 0x7FFFFFFFu) - kQ8BucketBase);  // < 0 below 2^-24
  std::int32_t j = d < 0 ? 0 : d >> kQ8BucketShift;
  j = j > kQ8Buckets - 1 ? kQ8Buckets - 1 : j;
  return static_cast<u32>(j) + (u >> 31) * static_cast<u32>(kQ8Buckets);
}
inline u8 q8_code(const Q8Map& m, float q) noexcept {
  const u32 u = f32_bits(q);
  const u32 entry = f32_bits(m.bucket[q8_bucket(u)]);
  const u32 key = (u & 0xFFFFu) ^ (0u - (u >> 31) & 0xFFFFu);
  return static_cast<u8>((entry >> 24) + (key >= (entry & 0x1FFFFu) ? 1u : 0u));
}

// Codes and absmax of one block x[0, len) (len <= kQ8Block).
inline void q8_encode_block(const Q8Map& m, const float* __restrict x, u8* __restrict codes, float* absmax,
                            int64_t len) noexcept {
  u32 amax = 0;
#pragma omp simd reduction(max : amax)
  for (int64_t i = 0; i < len; ++i) {
    const u32 u = f32_bits(x[i]) & 0x7FFFFFFFu;
    amax = u > amax ? u : amax;
  }
  if (amax == 0u || amax >= 0x7F800000u) {  // all zero; or a NaN or inf: the block decodes to NaN
    *absmax = amax == 0u ? 0.0f : bits_f32(0x7FC00000u);
    const u8 zero = m.zero;
    for (int64_t i = 0; i < len; ++i) codes[i] = zero;
    return;
  }
  const float a = bits_f32(amax);
  const float s = amax < 0x00800000u ? 0x1p64f : 1.0f;  // a subnormal absmax: scale first, exactly
  const float r = 1.0f / (a * s);
  *absmax = a;
  int64_t i = 0;
#if defined(__AVX2__)
  // 8 at a time: the buckets and keys in vectors, the 8 entries by scalar loads (on AMD Zen 1 a
  // gather costs twice as much), the 8 codes packed from the entries' top bytes plus the compares'
  // eight +1s. Same bits as the loop below.
  {
    const float* bucket = m.bucket;
    const __m256 vs = _mm256_set1_ps(s), vr = _mm256_set1_ps(r);
    const __m256i absmask = _mm256_set1_epi32(0x7FFFFFFF), low16 = _mm256_set1_epi32(0xFFFF);
    const __m256i split_mask = _mm256_set1_epi32(0x1FFFF), one = _mm256_set1_epi32(1);
    const __m256i bucket_base = _mm256_set1_epi32(static_cast<int>(kQ8BucketBase));
    const __m256i buckets = _mm256_set1_epi32(kQ8Buckets);
    const __m256i zero = _mm256_setzero_si256();
    const bool scaled = s != 1.0f;
    const __m256i top = _mm256_setr_epi8(3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; i + 8 <= len; i += 8) {
      __m256 xs = _mm256_loadu_ps(x + i);
      if (scaled) xs = _mm256_mul_ps(xs, vs);  // (x * 1 == x: the product is skipped when s == 1)
      const __m256i u = _mm256_castps_si256(_mm256_mul_ps(xs, vr));
      const __m256i neg = _mm256_srai_epi32(u, 31);
      // |q| <= (1 + 2^-24)^2 < 2: never past the last bucket, only below the first
      __m256i j = _mm256_srai_epi32(_mm256_sub_epi32(_mm256_and_si256(u, absmask), bucket_base), kQ8BucketShift);
      j = _mm256_max_epi32(j, zero);
      j = _mm256_add_epi32(j, _mm256_and_si256(neg, buckets));
      const __m256i key = _mm256_xor_si256(_mm256_and_si256(u, low16), _mm256_and_si256(neg, low16));
      const __m128i jl = _mm256_castsi256_si128(j), jh = _mm256_extracti128_si256(j, 1);
      const u64 j01 = static_cast<u64>(_mm_cvtsi128_si64(jl)), j23 = static_cast<u64>(_mm_extract_epi64(jl, 1));
      const u64 j45 = static_cast<u64>(_mm_cvtsi128_si64(jh)), j67 = static_cast<u64>(_mm_extract_epi64(jh, 1));
      const __m256i e = _mm256_castps_si256(lookup8(bucket, static_cast<u32>(j01), static_cast<u32>(j01 >> 32),
                                                    static_cast<u32>(j23), static_cast<u32>(j23 >> 32),
                                                    static_cast<u32>(j45), static_cast<u32>(j45 >> 32),
                                                    static_cast<u32>(j67), static_cast<u32>(j67 >> 32)));
      // key >= split  <=>  key + 1 > split (both < 2^17)
      const __m256i up = _mm256_cmpgt_epi32(_mm256_add_epi32(key, one), _mm256_and_si256(e, split_mask));
      const __m256i bases = _mm256_shuffle_epi8(e, top);
      const u64 packed = static_cast<u64>(static_cast<u32>(_mm256_extract_epi32(bases, 0))) |
                         (static_cast<u64>(static_cast<u32>(_mm256_extract_epi32(bases, 4))) << 32);
      const u64 both = packed + kByteSpread.word[_mm256_movemask_ps(_mm256_castsi256_ps(up))];  // no carry
      __builtin_memcpy(codes + i, &both, 8);
    }
  }
#endif
  for (; i < len; ++i) codes[i] = q8_code(m, (x[i] * s) * r);
}

// Codes and absmax of elements [0, n) (x[0] starts a block).
inline void q8_encode_n(const Q8Map& m, const float* __restrict x, u8* __restrict codes, float* __restrict absmax,
                        int64_t n) noexcept {
  for (int64_t at = 0; at < n; at += kQ8Block) {
    q8_encode_block(m, x + at, codes + at, absmax + at / kQ8Block, n - at < kQ8Block ? n - at : kQ8Block);
  }
}
