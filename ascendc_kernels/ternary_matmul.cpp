// ternary_matmul: the dense product of the ternary linear on the cube cores,
// through the AscendC high-level Matmul API.
//
// Math:  C (M x N) = A (M x K) @ op(B)
//     op(B) = B^T with B stored (N, K) when transposeB = 1 (forward: B = Q or W_hat),
//     op(B) = B   with B stored (K, N) when transposeB = 0 (backward: grad_x = (grad_y * s) @ Q).
// Types (Atlas A2 cube): half x half -> float32, bfloat16 x bfloat16 -> float32,
// float32 x float32 -> float32, int8 x int8 -> int32 (exact). No bias here:
// scales, bias and the cast to the output type happen in linear_epilogue,
// so they stay in float32.
//
// Memory per cube core (block b of usedCoreNum):
//   mBlocks = ceil(M / singleCoreM); mIdx = b % mBlocks; nIdx = b / mBlocks;
//   reads A rows [mIdx*singleCoreM, +tailM) x K and the matching singleCoreN
//   rows (or columns) of B; writes C[mIdx*singleCoreM.., nIdx*singleCoreN..],
//   a tailM x tailN block. L1/L0 staging is done by the Matmul API from the
//   base block sizes in TCubeTiling.
#include "kernel_operator.h"
#define ASCENDC_CUBE_ONLY
#include "lib/matmul_intf.h"
#include "kernel_tiling/kernel_tiling.h"

#include "kernel_common.h"

// Named (not anonymous) so all kernels can share one translation unit.
namespace ternary_matmul_impl {

template <typename TIn, typename TOut>
class TernaryMatmulKernel {
public:
    using AType = AscendC::MatmulType<AscendC::TPosition::GM, CubeFormat::ND, TIn>;
    using BType = AscendC::MatmulType<AscendC::TPosition::GM, CubeFormat::ND, TIn, true>;
    using CType = AscendC::MatmulType<AscendC::TPosition::GM, CubeFormat::ND, TOut>;
    using BiasType = AscendC::MatmulType<AscendC::TPosition::GM, CubeFormat::ND, TOut>;

    __aicore__ inline void Init(GM_ADDR a, GM_ADDR b, GM_ADDR c, const TernaryMatmulHeader& header,
                                const TCubeTiling& tiling)
    {
        header_ = header;
        tiling_ = tiling;
        aGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TIn*>(a), static_cast<uint64_t>(tiling.M) * tiling.Ka);
        bGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TIn*>(b), static_cast<uint64_t>(tiling.Kb) * tiling.N);
        cGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TOut*>(c), static_cast<uint64_t>(tiling.M) * tiling.N);
    }

    __aicore__ inline void Process(AscendC::TPipe* pipe)
    {
        int32_t mBlocks = (tiling_.M + tiling_.singleCoreM - 1) / tiling_.singleCoreM;
        int32_t nBlocks = (tiling_.N + tiling_.singleCoreN - 1) / tiling_.singleCoreN;
        int32_t block = static_cast<int32_t>(AscendC::GetBlockIdx());
        if (block >= mBlocks * nBlocks) {
            return;
        }
        int32_t mIdx = block % mBlocks;
        int32_t nIdx = block / mBlocks;

        uint64_t rowStart = static_cast<uint64_t>(mIdx) * tiling_.singleCoreM;
        uint64_t colStart = static_cast<uint64_t>(nIdx) * tiling_.singleCoreN;
        uint64_t offsetA = rowStart * tiling_.Ka;
        uint64_t offsetB = header_.transposeB ? colStart * tiling_.Kb : colStart;
        uint64_t offsetC = rowStart * tiling_.N + colStart;

        int32_t tailM = tiling_.M - static_cast<int32_t>(rowStart);
        tailM = tailM < tiling_.singleCoreM ? tailM : tiling_.singleCoreM;
        int32_t tailN = tiling_.N - static_cast<int32_t>(colStart);
        tailN = tailN < tiling_.singleCoreN ? tailN : tiling_.singleCoreN;

        REGIST_MATMUL_OBJ(pipe, GetSysWorkSpacePtr(), matmul_, &tiling_);
        matmul_.SetOrgShape(tiling_.M, tiling_.N, tiling_.Ka, tiling_.Kb);
        matmul_.SetTensorA(aGm_[offsetA], false);
        matmul_.SetTensorB(bGm_[offsetB], header_.transposeB != 0);
        if (tailM < tiling_.singleCoreM || tailN < tiling_.singleCoreN) {
            matmul_.SetTail(tailM, tailN);
        }
        matmul_.IterateAll(cGm_[offsetC]);
        matmul_.End();
    }

private:
    AscendC::Matmul<AType, BType, CType, BiasType, CFG_NORM> matmul_;
    AscendC::GlobalTensor<TIn> aGm_;
    AscendC::GlobalTensor<TIn> bGm_;
    AscendC::GlobalTensor<TOut> cGm_;
    TernaryMatmulHeader header_;
    TCubeTiling tiling_;
};

template <typename TIn, typename TOut>
__aicore__ inline void RunTernaryMatmul(GM_ADDR a, GM_ADDR b, GM_ADDR c, const TernaryMatmulHeader& header,
                                        const TCubeTiling& tiling)
{
    AscendC::TPipe pipe;
    TernaryMatmulKernel<TIn, TOut> kernel;
    kernel.Init(a, b, c, header, tiling);
    kernel.Process(&pipe);
}

}  // namespace ternary_matmul_impl

// The tiling buffer contains a TernaryMatmulHeader followed by a TCubeTiling.
extern "C" __global__ __aicore__ void ternary_matmul(GM_ADDR a, GM_ADDR b, GM_ADDR c, GM_ADDR workspace,
                                                     GM_ADDR tilingGm)
{
    AscendC::SetSysWorkspace(workspace);
    if (GetSysWorkSpacePtr() == nullptr) {
        return;
    }
    TernaryMatmulHeader header;
    TCubeTiling tiling;
    LoadTiling(header, tilingGm);
    LoadTiling(tiling, tilingGm + sizeof(TernaryMatmulHeader));

    if (header.dtype == kBitcpmFloat16) {
        ternary_matmul_impl::RunTernaryMatmul<half, float>(a, b, c, header, tiling);
    } else if (header.dtype == kBitcpmBFloat16) {
        ternary_matmul_impl::RunTernaryMatmul<bfloat16_t, float>(a, b, c, header, tiling);
    } else if (header.dtype == kBitcpmInt8) {
        ternary_matmul_impl::RunTernaryMatmul<int8_t, int32_t>(a, b, c, header, tiling);
    } else {
        ternary_matmul_impl::RunTernaryMatmul<float, float>(a, b, c, header, tiling);
    }
}
