// ternary_dequantize: ternary codes back to numbers on the vector cores.
//
// Math, per group of `groupLen` contiguous codes Q (int8, values -1, 0, +1):
//     kDequantizeCodesOnly    out = Q                      (exact in every type)
//     kDequantizePerGroup     out = (Q * scales[g]).to(out dtype)
//     kDequantizeSharedScale  out = (Q * scales[0]).to(out dtype)
// The product is formed in float32 and rounded once (CAST_RINT, round half to
// even) to half or bfloat16, which is `(Q * s).to(dtype)` of the reference.
// Codes widen int8 -> half -> float32: Atlas A2 has no int8 -> float32 Cast.
// The forward pass uses kDequantizeCodesOnly to give the cube Q in the
// activation type when the scale is per row or per tensor (applied after the
// product), and kDequantizePerGroup for group scales.
//
// Memory per vector core:
//   global: reads codes[first*groupLen, (first+count)*groupLen) and
//           scales[first, first+count) once; writes the same span of out.
//   Unified Buffer (tileLen elements, see TernaryDequantizeTilingFor):
//           inQueue   2 x tileLen x 1               codes, double-buffered
//           halfBuf   tileLen x 2                   codes as half
//           floatBuf  tileLen x 4                   codes (times scale) as float32
//           outQueue  2 x tileLen x sizeof(out)     output, double-buffered
#include "kernel_common.h"

// Named (not anonymous) so all kernels can share one translation unit.
namespace ternary_dequantize_impl {

constexpr int32_t kBufferNum = 2;

template <typename TOut>
class TernaryDequantizeKernel {
public:
    __aicore__ inline void Init(GM_ADDR codes, GM_ADDR scales, GM_ADDR out, const TernaryDequantizeTiling& tiling)
    {
        tiling_ = tiling;
        uint64_t numel = tiling.numGroups * tiling.groupLen;
        codesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(codes), numel);
        outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TOut*>(out), numel);
        if (tiling.scaleMode == kDequantizePerGroup) {
            scalesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(scales), tiling.numGroups);
        } else if (tiling.scaleMode == kDequantizeSharedScale) {
            scalesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(scales), 1);
        }

        uint32_t tile = tiling.tileLen;
        pipe_.InitBuffer(inQueue_, kBufferNum, tile * sizeof(int8_t));
        pipe_.InitBuffer(halfBuf_, tile * sizeof(half));
        pipe_.InitBuffer(floatBuf_, tile * sizeof(float));
        pipe_.InitBuffer(outQueue_, kBufferNum, tile * sizeof(TOut));
    }

    __aicore__ inline void Process()
    {
        uint64_t first = 0;
        uint64_t count = 0;
        BlockItems(tiling_.split, AscendC::GetBlockIdx(), first, count);

        for (uint64_t group = first; group < first + count; ++group) {
            float scale = 1.0f;
            if (tiling_.scaleMode == kDequantizePerGroup) {
                scale = scalesGm_.GetValue(group);
            } else if (tiling_.scaleMode == kDequantizeSharedScale) {
                scale = scalesGm_.GetValue(0);
            }

            uint64_t offset = group * tiling_.groupLen;
            for (uint32_t done = 0; done < tiling_.groupLen; done += tiling_.tileLen) {
                uint32_t len = tiling_.groupLen - done < tiling_.tileLen ? tiling_.groupLen - done : tiling_.tileLen;
                CopyIn(offset + done, len);
                Compute(len, scale);
                CopyOut(offset + done, len);
            }
        }
    }

private:
    __aicore__ inline void CopyIn(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<int8_t> codes = inQueue_.template AllocTensor<int8_t>();
        AscendC::DataCopyExtParams params(1, len * sizeof(int8_t), 0, 0, 0);
        AscendC::DataCopyPadExtParams<int8_t> padParams;
        AscendC::DataCopyPad(codes, codesGm_[offset], params, padParams);
        inQueue_.EnQue(codes);
    }

    __aicore__ inline void Compute(uint32_t len, float scale)
    {
        bool scaled = tiling_.scaleMode != kDequantizeCodesOnly;
        AscendC::LocalTensor<int8_t> codes = inQueue_.template DeQue<int8_t>();
        AscendC::LocalTensor<TOut> out = outQueue_.template AllocTensor<TOut>();

        if constexpr (IsSameType<TOut, half>::value) {
            if (!scaled) {
                AscendC::Cast(out, codes, AscendC::RoundMode::CAST_NONE, len);
                inQueue_.FreeTensor(codes);
                outQueue_.EnQue(out);
                return;
            }
        }

        AscendC::LocalTensor<half> qHalf = halfBuf_.Get<half>();
        AscendC::Cast(qHalf, codes, AscendC::RoundMode::CAST_NONE, len);
        inQueue_.FreeTensor(codes);

        if constexpr (IsSameType<TOut, float>::value) {
            AscendC::Cast(out, qHalf, AscendC::RoundMode::CAST_NONE, len);
            if (scaled) {
                AscendC::Muls(out, out, scale, static_cast<int32_t>(len));
            }
        } else {
            AscendC::LocalTensor<float> qFloat = floatBuf_.Get<float>();
            AscendC::Cast(qFloat, qHalf, AscendC::RoundMode::CAST_NONE, len);
            if (scaled) {
                AscendC::Muls(qFloat, qFloat, scale, static_cast<int32_t>(len));
            }
            AscendC::Cast(out, qFloat, AscendC::RoundMode::CAST_RINT, len);
        }
        outQueue_.EnQue(out);
    }

    __aicore__ inline void CopyOut(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<TOut> out = outQueue_.template DeQue<TOut>();
        AscendC::DataCopyExtParams params(1, len * sizeof(TOut), 0, 0, 0);
        AscendC::DataCopyPad(outGm_[offset], out, params);
        outQueue_.FreeTensor(out);
    }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> inQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> outQueue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> halfBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> floatBuf_;
    AscendC::GlobalTensor<int8_t> codesGm_;
    AscendC::GlobalTensor<float> scalesGm_;
    AscendC::GlobalTensor<TOut> outGm_;
    TernaryDequantizeTiling tiling_;
};

template <typename TOut>
__aicore__ inline void RunTernaryDequantize(GM_ADDR codes, GM_ADDR scales, GM_ADDR out,
                                            const TernaryDequantizeTiling& tiling)
{
    TernaryDequantizeKernel<TOut> kernel;
    kernel.Init(codes, scales, out, tiling);
    kernel.Process();
}

}  // namespace ternary_dequantize_impl

extern "C" __global__ __aicore__ void ternary_dequantize(GM_ADDR codes, GM_ADDR scales, GM_ADDR out,
                                                         GM_ADDR tilingGm)
{
    TernaryDequantizeTiling tiling;
    LoadTiling(tiling, tilingGm);
    if (tiling.outDtype == kBitcpmFloat16) {
        ternary_dequantize_impl::RunTernaryDequantize<half>(codes, scales, out, tiling);
    } else if (tiling.outDtype == kBitcpmBFloat16) {
        ternary_dequantize_impl::RunTernaryDequantize<bfloat16_t>(codes, scales, out, tiling);
    } else {
        ternary_dequantize_impl::RunTernaryDequantize<float>(codes, scales, out, tiling);
    }
}
