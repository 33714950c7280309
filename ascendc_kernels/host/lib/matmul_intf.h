// Host implementation of the part of the AscendC high-level Matmul API that
// ternary_matmul uses: MatmulType, Matmul with SetOrgShape, SetTensorA,
// SetTensorB, SetTail, IterateAll and End, REGIST_MATMUL_OBJ and the system
// workspace pointer. Signatures follow asc-devkit's
// include/adv_api/matmul/matmul.h.
//
// Strict about what Atlas A2's cube accepts:
//   - input/output types: half x half -> float, bfloat16 x bfloat16 -> float,
//     float x float -> float, int8 x int8 -> int32;
//   - base blocks that fit L0A/L0B (64 KB each, doubled when double-buffered)
//     and L0C (128 KB of float or int32 accumulators);
//   - every element read or written inside the GlobalTensor bounds.
// The product is exact for int8 and accumulated in float32, in K order, for
// the floating types. The hardware accumulates in base-K blocks, so floating
// results may differ in the last bits.
#pragma once

#include "kernel_operator.h"
#include "kernel_tiling/kernel_tiling.h"

enum class CubeFormat : uint8_t { ND = 0, NZ, ZN, ZZ, NN, ND_ALIGN, SCALAR, VECTOR };

struct MatmulConfig {
    bool doNorm = true;
};
inline constexpr MatmulConfig CFG_NORM{};

namespace ascendc_host {

inline uint8_t*& SysWorkspace()
{
    static thread_local uint8_t* workspace = nullptr;
    return workspace;
}

constexpr uint32_t kL0ABytes = 64 * 1024;
constexpr uint32_t kL0BBytes = 64 * 1024;
constexpr uint32_t kL0CBytes = 128 * 1024;

}  // namespace ascendc_host

namespace AscendC {

inline void SetSysWorkspace(GM_ADDR workspace) { ascendc_host::SysWorkspace() = workspace; }

template <TPosition POSITION, CubeFormat FORMAT, typename TYPE, bool ISTRANS = false>
struct MatmulType {
    constexpr static TPosition pos = POSITION;
    constexpr static CubeFormat format = FORMAT;
    using T = TYPE;
    constexpr static bool isTrans = ISTRANS;
};

template <class A_TYPE, class B_TYPE, class C_TYPE, class BIAS_TYPE, const MatmulConfig& MM_CFG = CFG_NORM>
class Matmul {
    using SrcAT = typename A_TYPE::T;
    using SrcBT = typename B_TYPE::T;
    using DstT = typename C_TYPE::T;

public:
    void HostRegister(TPipe* pipe, const TCubeTiling* tiling)
    {
        const char* call = "REGIST_MATMUL_OBJ";
        if (pipe == nullptr || tiling == nullptr) {
            ascendc_host::Fail(call, "pipe and tiling must not be null");
        }
        constexpr bool halfPath = std::is_same_v<SrcAT, half> && std::is_same_v<SrcBT, half> &&
                                  std::is_same_v<DstT, float>;
        constexpr bool bf16Path = std::is_same_v<SrcAT, bfloat16_t> && std::is_same_v<SrcBT, bfloat16_t> &&
                                  std::is_same_v<DstT, float>;
        constexpr bool floatPath = std::is_same_v<SrcAT, float> && std::is_same_v<SrcBT, float> &&
                                   std::is_same_v<DstT, float>;
        constexpr bool int8Path = std::is_same_v<SrcAT, int8_t> && std::is_same_v<SrcBT, int8_t> &&
                                  std::is_same_v<DstT, int32_t>;
        if constexpr (!(halfPath || bf16Path || floatPath || int8Path)) {
            ascendc_host::Fail(call, std::string(ascendc_host::TypeName<SrcAT>()) + " x " +
                                         ascendc_host::TypeName<SrcBT>() + " -> " + ascendc_host::TypeName<DstT>() +
                                         " is not a cube type combination this host implementation accepts");
        }
        tiling_ = *tiling;
        const TCubeTiling& t = tiling_;
        if (t.M <= 0 || t.N <= 0 || t.Ka <= 0 || t.Kb <= 0 || t.singleCoreM <= 0 || t.singleCoreN <= 0 ||
            t.singleCoreK <= 0) {
            ascendc_host::Fail(call, "tiling has a non-positive shape: M " + std::to_string(t.M) + ", N " +
                                         std::to_string(t.N) + ", Ka " + std::to_string(t.Ka) + ", Kb " +
                                         std::to_string(t.Kb) + ", singleCore " + std::to_string(t.singleCoreM) +
                                         " x " + std::to_string(t.singleCoreN) + " x " +
                                         std::to_string(t.singleCoreK));
        }
        uint64_t l0a = static_cast<uint64_t>(t.baseM) * t.baseK * sizeof(SrcAT) * (t.dbL0A > 1 ? 2 : 1);
        uint64_t l0b = static_cast<uint64_t>(t.baseN) * t.baseK * sizeof(SrcBT) * (t.dbL0B > 1 ? 2 : 1);
        uint64_t l0c = static_cast<uint64_t>(t.baseM) * t.baseN * 4 * (t.dbL0C > 1 ? 2 : 1);
        if (t.baseM <= 0 || t.baseN <= 0 || t.baseK <= 0 || l0a > ascendc_host::kL0ABytes ||
            l0b > ascendc_host::kL0BBytes || l0c > ascendc_host::kL0CBytes) {
            ascendc_host::Fail(call, "base block " + std::to_string(t.baseM) + " x " + std::to_string(t.baseN) +
                                         " x " + std::to_string(t.baseK) + " needs L0A " + std::to_string(l0a) +
                                         ", L0B " + std::to_string(l0b) + ", L0C " + std::to_string(l0c) +
                                         " bytes; Atlas A2 has 65536, 65536 and 131072");
        }
        orgM_ = t.M;
        orgN_ = t.N;
        orgKa_ = t.Ka;
        orgKb_ = t.Kb;
        tailM_ = t.singleCoreM;
        tailN_ = t.singleCoreN;
        tailK_ = t.singleCoreK;
        registered_ = true;
    }

    void SetOrgShape(int orgM, int orgN, int orgK) { SetOrgShape(orgM, orgN, orgK, orgK); }
    void SetOrgShape(int orgM, int orgN, int orgKa, int orgKb, int orgKc = 0)
    {
        (void)orgKc;
        orgM_ = orgM;
        orgN_ = orgN;
        orgKa_ = orgKa;
        orgKb_ = orgKb;
    }
    void SetTensorA(const GlobalTensor<SrcAT>& gm, bool isTransposeA = false)
    {
        a_ = gm;
        transA_ = isTransposeA;
        hasA_ = true;
    }
    void SetTensorB(const GlobalTensor<SrcBT>& gm, bool isTransposeB = false)
    {
        if (isTransposeB && !B_TYPE::isTrans) {
            ascendc_host::Fail("Matmul::SetTensorB", "transposed B needs a MatmulType declared with ISTRANS = true");
        }
        b_ = gm;
        transB_ = isTransposeB;
        hasB_ = true;
    }
    void SetTail(int tailM = -1, int tailN = -1, int tailK = -1)
    {
        if (tailM > 0) tailM_ = tailM;
        if (tailN > 0) tailN_ = tailN;
        if (tailK > 0) tailK_ = tailK;
    }

    void IterateAll(const GlobalTensor<DstT>& gm, uint8_t enAtomic = 0, bool enSequentialWrite = false,
                    bool waitIterateAll = false, bool fakeMsg = false)
    {
        (void)enSequentialWrite;
        (void)waitIterateAll;
        (void)fakeMsg;
        const char* call = "Matmul::IterateAll";
        if (!registered_) {
            ascendc_host::Fail(call, "REGIST_MATMUL_OBJ was not called");
        }
        if (!hasA_ || !hasB_) {
            ascendc_host::Fail(call, "SetTensorA and SetTensorB must come first");
        }
        if (enAtomic != 0) {
            ascendc_host::Fail(call, "atomic accumulation is not emulated");
        }
        if (tailM_ > tiling_.singleCoreM || tailN_ > tiling_.singleCoreN || tailK_ > tiling_.singleCoreK) {
            ascendc_host::Fail(call, "tail " + std::to_string(tailM_) + " x " + std::to_string(tailN_) + " x " +
                                         std::to_string(tailK_) + " exceeds the single-core shape");
        }
        const int64_t m = tailM_;
        const int64_t n = tailN_;
        const int64_t k = tailK_;
        // Bounds of the last element each operand touches.
        uint64_t lastA = transA_ ? (k - 1) * orgM_ + (m - 1) : (m - 1) * orgKa_ + (k - 1);
        uint64_t lastB = transB_ ? (n - 1) * orgKb_ + (k - 1) : (k - 1) * orgN_ + (n - 1);
        uint64_t lastC = (m - 1) * orgN_ + (n - 1);
        a_.CheckRange(call, 0, lastA + 1);
        b_.CheckRange(call, 0, lastB + 1);
        gm.CheckRange(call, 0, lastC + 1);

        const SrcAT* a = a_.GetPhyAddr();
        const SrcBT* b = b_.GetPhyAddr();
        DstT* c = gm.GetPhyAddr();
        for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
                if constexpr (std::is_same_v<DstT, int32_t>) {
                    int64_t sum = 0;
                    for (int64_t kk = 0; kk < k; ++kk) {
                        sum += static_cast<int64_t>(ElementA(a, i, kk)) * static_cast<int64_t>(ElementB(b, kk, j));
                    }
                    c[i * orgN_ + j] = static_cast<int32_t>(sum);
                } else {
                    float sum = 0.0f;
                    for (int64_t kk = 0; kk < k; ++kk) {
                        sum += static_cast<float>(ElementA(a, i, kk)) * static_cast<float>(ElementB(b, kk, j));
                    }
                    c[i * orgN_ + j] = sum;
                }
            }
        }
    }

    void End()
    {
        registered_ = false;
        hasA_ = false;
        hasB_ = false;
    }

private:
    SrcAT ElementA(const SrcAT* a, int64_t i, int64_t kk) const
    {
        return transA_ ? a[kk * orgM_ + i] : a[i * orgKa_ + kk];
    }
    SrcBT ElementB(const SrcBT* b, int64_t kk, int64_t j) const
    {
        return transB_ ? b[j * orgKb_ + kk] : b[kk * orgN_ + j];
    }

    TCubeTiling tiling_{};
    GlobalTensor<SrcAT> a_;
    GlobalTensor<SrcBT> b_;
    int64_t orgM_ = 0;
    int64_t orgN_ = 0;
    int64_t orgKa_ = 0;
    int64_t orgKb_ = 0;
    int tailM_ = 0;
    int tailN_ = 0;
    int tailK_ = 0;
    bool transA_ = false;
    bool transB_ = false;
    bool hasA_ = false;
    bool hasB_ = false;
    bool registered_ = false;
};

}  // namespace AscendC

inline GM_ADDR GetSysWorkSpacePtr() { return ascendc_host::SysWorkspace(); }

#define REGIST_MATMUL_OBJ(pipe, workspace, mm, tiling) \
    do {                                               \
        (void)(workspace);                             \
        (mm).HostRegister((pipe), (tiling));           \
    } while (0)
