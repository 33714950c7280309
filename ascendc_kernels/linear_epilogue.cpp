// linear_epilogue: per-channel and per-token rescaling of a matmul result on
// the vector cores, plus bias and the cast to the output type.
//
// Math, for every row m and column n of acc (M x N), in float32:
//     v = float(acc[m, n])
//     v = v * colScale[n]        if kEpilogueColScale  (weight scale s, per output channel)
//     v = v / rowDivisor[m]      if kEpilogueRowDiv    (activation scale s_x, true division)
//     v = v + bias[n]            if kEpilogueBias      (bias in float32)
//     out[m, n] = v rounded half to even to the output type
// Uses:
//   forward, act_bits=None, per-row/tensor scale: acc = x @ Q^T (float32 from the cube),
//       y = acc * s + bias;
//   forward, act_bits=8: acc = q_x @ Q^T (int32 from the cube), y = acc * s / s_x + bias;
//   forward with group scales: acc = x @ W_hat^T, y = acc + bias;
//   backward: grad_y * s in the activation type, the left operand of grad_x = (grad_y * s) @ Q.
// int32 -> float32 is CAST_NONE, which rounds to nearest even above 2^24.
//
// Memory per vector core:
//   global: reads acc rows [first, first+count) once and, per tile, the
//           matching colScale and bias slices. Reads rowDivisor[m] once per
//           row and writes out rows [first, first+count).
//   Unified Buffer (tileLen elements, see LinearEpilogueTilingFor):
//           inQueue   2 x tileLen x sizeof(acc)   acc, double-buffered
//           colQueue  tileLen x 4                 colScale slice
//           biasQueue tileLen x 4                 bias slice
//           rowBuf    tileLen x 4                 broadcast rowDivisor[m]
//           floatBuf  tileLen x 4                 the float32 value v
//           outQueue  2 x tileLen x sizeof(out)   output, double-buffered
#include "kernel_common.h"

// Named (not anonymous) so all kernels can share one translation unit.
namespace linear_epilogue_impl {

constexpr int32_t kBufferNum = 2;

template <typename TIn, typename TOut>
class LinearEpilogueKernel {
public:
    __aicore__ inline void Init(GM_ADDR acc, GM_ADDR colScale, GM_ADDR rowDivisor, GM_ADDR bias, GM_ADDR out,
                                const LinearEpilogueTiling& tiling)
    {
        tiling_ = tiling;
        uint64_t numel = tiling.numRows * tiling.numCols;
        accGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TIn*>(acc), numel);
        outGm_.SetGlobalBuffer(reinterpret_cast<__gm__ TOut*>(out), numel);
        if (tiling.flags & kEpilogueColScale) {
            colScaleGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(colScale), tiling.numCols);
        }
        if (tiling.flags & kEpilogueRowDiv) {
            rowDivisorGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(rowDivisor), tiling.numRows);
        }
        if (tiling.flags & kEpilogueBias) {
            biasGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(bias), tiling.numCols);
        }

        uint32_t tile = tiling.tileLen;
        pipe_.InitBuffer(inQueue_, kBufferNum, tile * sizeof(TIn));
        pipe_.InitBuffer(colQueue_, 1, tile * sizeof(float));
        pipe_.InitBuffer(biasQueue_, 1, tile * sizeof(float));
        pipe_.InitBuffer(rowBuf_, tile * sizeof(float));
        pipe_.InitBuffer(floatBuf_, tile * sizeof(float));
        pipe_.InitBuffer(outQueue_, kBufferNum, tile * sizeof(TOut));
    }

    __aicore__ inline void Process()
    {
        uint64_t first = 0;
        uint64_t count = 0;
        BlockItems(tiling_.split, AscendC::GetBlockIdx(), first, count);

        for (uint64_t row = first; row < first + count; ++row) {
            float divisor = 1.0f;
            if (tiling_.flags & kEpilogueRowDiv) {
                divisor = rowDivisorGm_.GetValue(row);
                uint32_t firstLen = tiling_.numCols < tiling_.tileLen ? tiling_.numCols : tiling_.tileLen;
                AscendC::Duplicate(rowBuf_.Get<float>(), divisor, static_cast<int32_t>(firstLen));
            }
            for (uint32_t col = 0; col < tiling_.numCols; col += tiling_.tileLen) {
                uint32_t len = tiling_.numCols - col < tiling_.tileLen ? tiling_.numCols - col : tiling_.tileLen;
                uint64_t offset = row * tiling_.numCols + col;
                CopyIn(offset, col, len);
                Compute(len);
                CopyOut(offset, len);
            }
        }
    }

private:
    __aicore__ inline void CopyIn(uint64_t offset, uint32_t col, uint32_t len)
    {
        AscendC::LocalTensor<TIn> acc = inQueue_.template AllocTensor<TIn>();
        AscendC::DataCopyExtParams params(1, len * sizeof(TIn), 0, 0, 0);
        AscendC::DataCopyPadExtParams<TIn> padParams;
        AscendC::DataCopyPad(acc, accGm_[offset], params, padParams);
        inQueue_.EnQue(acc);

        AscendC::DataCopyExtParams floatParams(1, len * sizeof(float), 0, 0, 0);
        AscendC::DataCopyPadExtParams<float> floatPad;
        if (tiling_.flags & kEpilogueColScale) {
            AscendC::LocalTensor<float> colScale = colQueue_.template AllocTensor<float>();
            AscendC::DataCopyPad(colScale, colScaleGm_[col], floatParams, floatPad);
            colQueue_.EnQue(colScale);
        }
        if (tiling_.flags & kEpilogueBias) {
            AscendC::LocalTensor<float> bias = biasQueue_.template AllocTensor<float>();
            AscendC::DataCopyPad(bias, biasGm_[col], floatParams, floatPad);
            biasQueue_.EnQue(bias);
        }
    }

    __aicore__ inline void Compute(uint32_t len)
    {
        int32_t count = static_cast<int32_t>(len);
        AscendC::LocalTensor<TIn> acc = inQueue_.template DeQue<TIn>();
        AscendC::LocalTensor<TOut> out = outQueue_.template AllocTensor<TOut>();
        // With a float32 output the value is built in the output tile itself.
        AscendC::LocalTensor<float> value;
        if constexpr (IsSameType<TOut, float>::value) {
            value = out;
        } else {
            value = floatBuf_.Get<float>();
        }

        if constexpr (IsSameType<TIn, float>::value) {
            AscendC::Muls(value, acc, 1.0f, count);
        } else {
            AscendC::Cast(value, acc, AscendC::RoundMode::CAST_NONE, len);
        }
        inQueue_.FreeTensor(acc);

        if (tiling_.flags & kEpilogueColScale) {
            AscendC::LocalTensor<float> colScale = colQueue_.template DeQue<float>();
            AscendC::Mul(value, value, colScale, count);
            colQueue_.FreeTensor(colScale);
        }
        if (tiling_.flags & kEpilogueRowDiv) {
            AscendC::Div(value, value, rowBuf_.Get<float>(), count);
        }
        if (tiling_.flags & kEpilogueBias) {
            AscendC::LocalTensor<float> bias = biasQueue_.template DeQue<float>();
            AscendC::Add(value, value, bias, count);
            biasQueue_.FreeTensor(bias);
        }

        if constexpr (!IsSameType<TOut, float>::value) {
            AscendC::Cast(out, value, AscendC::RoundMode::CAST_RINT, len);
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
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> colQueue_;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> biasQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> outQueue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> rowBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> floatBuf_;
    AscendC::GlobalTensor<TIn> accGm_;
    AscendC::GlobalTensor<float> colScaleGm_;
    AscendC::GlobalTensor<float> rowDivisorGm_;
    AscendC::GlobalTensor<float> biasGm_;
    AscendC::GlobalTensor<TOut> outGm_;
    LinearEpilogueTiling tiling_;
};

template <typename TIn, typename TOut>
__aicore__ inline void RunLinearEpilogue(GM_ADDR acc, GM_ADDR colScale, GM_ADDR rowDivisor, GM_ADDR bias,
                                         GM_ADDR out, const LinearEpilogueTiling& tiling)
{
    LinearEpilogueKernel<TIn, TOut> kernel;
    kernel.Init(acc, colScale, rowDivisor, bias, out, tiling);
    kernel.Process();
}

template <typename TIn>
__aicore__ inline void DispatchOutput(GM_ADDR acc, GM_ADDR colScale, GM_ADDR rowDivisor, GM_ADDR bias, GM_ADDR out,
                                      const LinearEpilogueTiling& tiling)
{
    if (tiling.outDtype == kBitcpmFloat16) {
        RunLinearEpilogue<TIn, half>(acc, colScale, rowDivisor, bias, out, tiling);
    } else if (tiling.outDtype == kBitcpmBFloat16) {
        RunLinearEpilogue<TIn, bfloat16_t>(acc, colScale, rowDivisor, bias, out, tiling);
    } else {
        RunLinearEpilogue<TIn, float>(acc, colScale, rowDivisor, bias, out, tiling);
    }
}

}  // namespace linear_epilogue_impl

extern "C" __global__ __aicore__ void linear_epilogue(GM_ADDR acc, GM_ADDR colScale, GM_ADDR rowDivisor, GM_ADDR bias,
                                                      GM_ADDR out, GM_ADDR tilingGm)
{
    LinearEpilogueTiling tiling;
    LoadTiling(tiling, tilingGm);
    if (tiling.inDtype == kBitcpmInt32) {
        linear_epilogue_impl::DispatchOutput<int32_t>(acc, colScale, rowDivisor, bias, out, tiling);
    } else if (tiling.inDtype == kBitcpmFloat16) {
        linear_epilogue_impl::DispatchOutput<half>(acc, colScale, rowDivisor, bias, out, tiling);
    } else if (tiling.inDtype == kBitcpmBFloat16) {
        linear_epilogue_impl::DispatchOutput<bfloat16_t>(acc, colScale, rowDivisor, bias, out, tiling);
    } else {
        linear_epilogue_impl::DispatchOutput<float>(acc, colScale, rowDivisor, bias, out, tiling);
    }
}
