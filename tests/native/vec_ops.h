// The vector layer's API (csrc/vec_<isa>.h) seen through plain arrays, for tests/native/vec_test.cpp.
//
// Every ISA's operations are exposed through one VecOps table: each entry loads its operands from
// arrays of kLanes values with the ISA's own loads, runs one API function and stores the result with
// the ISA's own stores. The table is built once, from the code under SSM_VEC_OPS_IMPL below, by a
// small translation unit per ISA (vec_isa_<isa>.cpp) compiled with that ISA's flags; the checks
// themselves (vec_test.cpp) are compiled for the baseline and only call through the table, so no
// instruction of an ISA the CPU lacks runs unless that ISA was detected.
#pragma once

#include <cstdint>

namespace vt {

enum BinOp { kAdd, kSub, kMul, kDiv, kMax, kMin, kNumBin };
enum TerOp { kFmadd, kFnmadd };
enum CmpOp { kLt, kLe, kGt, kGe, kEq, kUnord, kNumCmp };
enum MaskOp { kOr, kAnd, kAndnot };
enum IntOp { kIadd, kIsub, kIxor };
enum ShiftOp { kShl, kSra, kSrl };
constexpr int kShiftCounts[] = {0, 1, 7, 13, 16, 23, 31};
constexpr int kMaxLanes = 16;

struct VecOps {
  const char* name;
  int lanes;
  bool fused;  // fmadd / fnmadd are fused (a single rounding)
  // load(p) then store(float*): the widened values
  void (*load_f32)(const float* p, float* r);
  void (*load_f16)(const std::uint16_t* p, float* r);
  void (*load_bf16)(const std::uint16_t* p, float* r);
  // load(float*) then store(p)
  void (*store_f32)(const float* a, float* p);
  void (*store_f16)(const float* a, std::uint16_t* p);
  void (*store_bf16)(const float* a, std::uint16_t* p);
  void (*load_tail_f32)(const float* p, int n, float pad, float* r);
  void (*load_tail_f16)(const std::uint16_t* p, int n, float pad, float* r);
  void (*load_tail_bf16)(const std::uint16_t* p, int n, float pad, float* r);
  void (*store_tail_f32)(const float* a, int n, float* p);
  void (*store_tail_f16)(const float* a, int n, std::uint16_t* p);
  void (*store_tail_bf16)(const float* a, int n, std::uint16_t* p);
  void (*binary)(int op, const float* a, const float* b, float* r);
  void (*ternary)(int op, const float* a, const float* b, const float* c, float* r);
  void (*round_even)(const float* a, float* r);
  unsigned (*compare)(int op, const float* a, const float* b);  // mask_bits(op(a, b))
  // mask_bits(op(lt(a, b), lt(c, d)))
  unsigned (*mask_logic)(int op, const float* a, const float* b, const float* c, const float* d);
  unsigned (*tail_mask)(int n);
  void (*select)(const float* a, const float* b, const float* x, const float* y, float* r);  // lt(a, b) ? x : y
  void (*keep)(const float* a, const float* b, const float* x, float* r);                    // lt(a, b) ? x : 0
  float (*reduce_max)(const float* a);
  double (*reduce_sum)(const float* a);
  void (*broadcast)(float f, std::int32_t i, float* vf, float* vz, std::uint32_t* vi);  // vset, vzero, iset
  void (*bitcast)(const float* a, std::uint32_t* bits, float* back);  // as_int(a); as_float(as_int(a))
  void (*cvt_int)(const float* a, std::int32_t* r);
  void (*cvt_float)(const std::int32_t* a, float* r);
  void (*int_binary)(int op, const std::uint32_t* a, const std::uint32_t* b, std::uint32_t* r);
  void (*shift)(int op, int k, const std::uint32_t* a, std::uint32_t* r);  // k from kShiftCounts
  void (*mul_hilo)(const std::uint32_t* a, std::uint32_t m, std::uint32_t* hi, std::uint32_t* lo);
  void (*iota)(std::uint32_t base, std::uint32_t* r);
};

// Null when this build did not compile that ISA's layer (wrong architecture or flags).
const VecOps* vec_ops_scalar();
const VecOps* vec_ops_avx2();
const VecOps* vec_ops_avx512();
const VecOps* vec_ops_neon();

}  // namespace vt

// ---- the table, written once over the API; a vec_isa_<isa>.cpp defines SSM_VEC_OPS_ISA and includes this ----
#ifdef SSM_VEC_OPS_ISA
#include <cstring>

#define SSM_VT_CAT2(a, b) a##b
#define SSM_VT_CAT(a, b) SSM_VT_CAT2(a, b)

namespace {
namespace V = ssm::SSM_VEC_OPS_ISA;
using ssm::BFloat16;
using ssm::Half;
constexpr int L = V::kLanes;
static_assert(L <= vt::kMaxLanes, "lanes");

V::VF ld(const float* a) { return V::load(a); }
void st(float* r, V::VF v) { V::store(r, v); }
V::VI ldi(const std::uint32_t* a) {
  float f[L];
  std::memcpy(f, a, sizeof f);
  return V::as_int(V::load(f));
}
const Half* h16(const std::uint16_t* p) { return reinterpret_cast<const Half*>(p); }
Half* h16(std::uint16_t* p) { return reinterpret_cast<Half*>(p); }
const BFloat16* b16(const std::uint16_t* p) { return reinterpret_cast<const BFloat16*>(p); }
BFloat16* b16(std::uint16_t* p) { return reinterpret_cast<BFloat16*>(p); }

template <int K> void shift_k(int op, const std::uint32_t* a, std::uint32_t* r) {
  const V::VI v = ldi(a);
  V::store_u32(r, op == vt::kShl ? V::ishl<K>(v) : op == vt::kSra ? V::isra<K>(v) : V::isrl<K>(v));
}

const vt::VecOps kOps = {
    SSM_VT_NAME,
    L,
    SSM_VT_FUSED,
    [](const float* p, float* r) { st(r, V::load(p)); },
    [](const std::uint16_t* p, float* r) { st(r, V::load(h16(p))); },
    [](const std::uint16_t* p, float* r) { st(r, V::load(b16(p))); },
    [](const float* a, float* p) { V::store(p, ld(a)); },
    [](const float* a, std::uint16_t* p) { V::store(h16(p), ld(a)); },
    [](const float* a, std::uint16_t* p) { V::store(b16(p), ld(a)); },
    [](const float* p, int n, float pad, float* r) { st(r, V::load_tail(p, n, pad)); },
    [](const std::uint16_t* p, int n, float pad, float* r) { st(r, V::load_tail(h16(p), n, pad)); },
    [](const std::uint16_t* p, int n, float pad, float* r) { st(r, V::load_tail(b16(p), n, pad)); },
    [](const float* a, int n, float* p) { V::store_tail(p, n, ld(a)); },
    [](const float* a, int n, std::uint16_t* p) { V::store_tail(h16(p), n, ld(a)); },
    [](const float* a, int n, std::uint16_t* p) { V::store_tail(b16(p), n, ld(a)); },
    [](int op, const float* a, const float* b, float* r) {
      const V::VF x = ld(a), y = ld(b);
      switch (op) {
        case vt::kAdd: st(r, V::add(x, y)); break;
        case vt::kSub: st(r, V::sub(x, y)); break;
        case vt::kMul: st(r, V::mul(x, y)); break;
        case vt::kDiv: st(r, V::div(x, y)); break;
        case vt::kMax: st(r, V::vmax(x, y)); break;
        default: st(r, V::vmin(x, y)); break;
      }
    },
    [](int op, const float* a, const float* b, const float* c, float* r) {
      st(r, op == vt::kFmadd ? V::fmadd(ld(a), ld(b), ld(c)) : V::fnmadd(ld(a), ld(b), ld(c)));
    },
    [](const float* a, float* r) { st(r, V::round_even(ld(a))); },
    [](int op, const float* a, const float* b) -> unsigned {
      const V::VF x = ld(a), y = ld(b);
      switch (op) {
        case vt::kLt: return V::mask_bits(V::lt(x, y));
        case vt::kLe: return V::mask_bits(V::le(x, y));
        case vt::kGt: return V::mask_bits(V::gt(x, y));
        case vt::kGe: return V::mask_bits(V::ge(x, y));
        case vt::kEq: return V::mask_bits(V::eq(x, y));
        default: return V::mask_bits(V::unord(x, y));
      }
    },
    [](int op, const float* a, const float* b, const float* c, const float* d) -> unsigned {
      const V::VM m1 = V::lt(ld(a), ld(b)), m2 = V::lt(ld(c), ld(d));
      return V::mask_bits(op == vt::kOr ? V::m_or(m1, m2) : op == vt::kAnd ? V::m_and(m1, m2) : V::m_andnot(m1, m2));
    },
    [](int n) -> unsigned { return V::mask_bits(V::tail_mask(n)); },
    [](const float* a, const float* b, const float* x, const float* y, float* r) {
      st(r, V::select(V::lt(ld(a), ld(b)), ld(x), ld(y)));
    },
    [](const float* a, const float* b, const float* x, float* r) { st(r, V::keep(V::lt(ld(a), ld(b)), ld(x))); },
    [](const float* a) { return V::reduce_max(ld(a)); },
    [](const float* a) { return V::reduce_sum(ld(a)); },
    [](float f, std::int32_t i, float* vf, float* vz, std::uint32_t* vi) {
      st(vf, V::vset(f));
      st(vz, V::vzero());
      V::store_u32(vi, V::iset(i));
    },
    [](const float* a, std::uint32_t* bits, float* back) {
      V::store_u32(bits, V::as_int(ld(a)));
      st(back, V::as_float(V::as_int(ld(a))));
    },
    [](const float* a, std::int32_t* r) { V::store_u32(reinterpret_cast<std::uint32_t*>(r), V::cvt_int(ld(a))); },
    [](const std::int32_t* a, float* r) { st(r, V::cvt_float(ldi(reinterpret_cast<const std::uint32_t*>(a)))); },
    [](int op, const std::uint32_t* a, const std::uint32_t* b, std::uint32_t* r) {
      const V::VI x = ldi(a), y = ldi(b);
      V::store_u32(r, op == vt::kIadd ? V::iadd(x, y) : op == vt::kIsub ? V::isub(x, y) : V::ixor(x, y));
    },
    [](int op, int k, const std::uint32_t* a, std::uint32_t* r) {
      switch (k) {
        case 0: shift_k<0>(op, a, r); break;
        case 1: shift_k<1>(op, a, r); break;
        case 7: shift_k<7>(op, a, r); break;
        case 13: shift_k<13>(op, a, r); break;
        case 16: shift_k<16>(op, a, r); break;
        case 23: shift_k<23>(op, a, r); break;
        default: shift_k<31>(op, a, r); break;
      }
    },
    [](const std::uint32_t* a, std::uint32_t m, std::uint32_t* hi, std::uint32_t* lo) {
      V::VI h, l;
      V::mul_hilo(ldi(a), m, h, l);
      V::store_u32(hi, h);
      V::store_u32(lo, l);
    },
    [](std::uint32_t base, std::uint32_t* r) { V::store_u32(r, V::iota(base)); },
};
}  // namespace

const vt::VecOps* vt::SSM_VT_CAT(vec_ops_, SSM_VEC_OPS_ISA)() { return &kOps; }
#endif
