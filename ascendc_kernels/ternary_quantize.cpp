// ternary_quantize: absmean ternary quantization of a weight on the vector cores.
//
// Math, per group of `groupLen` contiguous elements of W (float32 throughout):
//     s = max(sum(|W_group|) / groupLen, eps)
//     Q = clamp(round_half_to_even(W / s), -1, 1)            int8 codes
// `W / s` is a true IEEE division: the scale is broadcast into a tensor and
// divided with Div, not multiplied by a reciprocal. Rounding happens in
// float32 (Cast float -> float, CAST_RINT). Only then are the values, now
// exactly -1, 0 or +1, cast float -> half -> int8: Atlas A2 has no direct
// float -> int8 Cast, and a float -> half Cast before rounding would turn
// 0.50000006 into 0.5 and then round it to 0 instead of 1.
// An all-zero group gives s = eps and codes 0. A non-finite weight makes its
// group's scale non-finite; the host checks the scales and raises.
//
// Modes (TernaryQuantizeTiling::mode):
//   kQuantizeFromGroup  scales[g] = s of group g, codes as above;
//   kQuantizeAbsSum     scales[g] = sum |W_group| only, no codes (first pass
//                       of per-tensor scaling; the host reduces the sums);
//   kQuantizeGivenScale codes of every group with the scale in scales[0].
//
// Memory per vector core:
//   global: reads W[first*groupLen, (first+count)*groupLen) once when a group
//           fits a tile (groupLen <= tileLen), twice otherwise (pass 1 sums
//           |W|, pass 2 divides); writes the same span of codes and
//           scales[first, first+count).
//   Unified Buffer (tileLen elements, see TernaryQuantizeTilingFor):
//           inQueue   2 x tileLen x sizeof(T)   weights, double-buffered
//           outQueue  2 x tileLen x 1            int8 codes, double-buffered
//           floatBuf  tileLen x 4                W as float32, then W / s
//           divBuf    tileLen x 4                |W|, then the broadcast scale
//           halfBuf   tileLen x 2                codes as half
//           reduceBuf reduceTmpLen x 4           ReduceSum workspace
//           sumBuf    32 bytes                   ReduceSum result
//           scaleBuf  32 bytes                   one scale on its way to GM
#include "kernel_common.h"

// Named (not anonymous) so all kernels can share one translation unit.
namespace ternary_quantize_impl {

constexpr int32_t kBufferNum = 2;

template <typename T>
class TernaryQuantizeKernel {
public:
    __aicore__ inline void Init(GM_ADDR w, GM_ADDR codes, GM_ADDR scales, const TernaryQuantizeTiling& tiling)
    {
        tiling_ = tiling;
        uint64_t numel = tiling.numGroups * tiling.groupLen;
        wGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(w), numel);
        codesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(codes), numel);
        uint64_t numScales = tiling.mode == kQuantizeGivenScale ? 1 : tiling.numGroups;
        scalesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(scales), numScales);

        uint32_t tile = tiling.tileLen;
        pipe_.InitBuffer(inQueue_, kBufferNum, tile * sizeof(T));
        pipe_.InitBuffer(outQueue_, kBufferNum, tile * sizeof(int8_t));
        pipe_.InitBuffer(floatBuf_, tile * sizeof(float));
        pipe_.InitBuffer(divBuf_, tile * sizeof(float));
        pipe_.InitBuffer(halfBuf_, tile * sizeof(half));
        pipe_.InitBuffer(reduceBuf_, tiling.reduceTmpLen * sizeof(float));
        pipe_.InitBuffer(sumBuf_, 32);
        pipe_.InitBuffer(scaleBuf_, 32);
    }

    __aicore__ inline void Process()
    {
        uint64_t first = 0;
        uint64_t count = 0;
        BlockItems(tiling_.split, AscendC::GetBlockIdx(), first, count);

        float givenScale = 0.0f;
        if (tiling_.mode == kQuantizeGivenScale && count > 0) {
            givenScale = scalesGm_.GetValue(0);
        }

        // NOTE: every group costs its own DMA round trip and scalar sync, which
        // is slow for small groups (g = 32 or 64); packing several groups
        // into one tile is not done yet.
        for (uint64_t group = first; group < first + count; ++group) {
            uint64_t offset = group * tiling_.groupLen;
            if (tiling_.mode == kQuantizeGivenScale) {
                QuantizeStreamed(offset, givenScale);
            } else if (tiling_.groupLen <= tiling_.tileLen) {
                ProcessResidentGroup(group, offset);
            } else {
                ProcessStreamedGroup(group, offset);
            }
        }
    }

private:
    // One read of W: the whole group stays in the Unified Buffer between the
    // sum and the division.
    __aicore__ inline void ProcessResidentGroup(uint64_t group, uint64_t offset)
    {
        uint32_t len = tiling_.groupLen;
        CopyIn(offset, len);

        AscendC::LocalTensor<T> w = inQueue_.template DeQue<T>();
        AscendC::LocalTensor<float> wFloat = ToFloat(w, len);
        float sum = SumAbs(wFloat, len);
        if (tiling_.mode == kQuantizeAbsSum) {
            inQueue_.FreeTensor(w);
            StoreScalar(group, sum);
            return;
        }
        float scale = ScaleFromSum(sum);
        AscendC::Duplicate(divBuf_.Get<float>(), scale, static_cast<int32_t>(len));
        ComputeCodes(wFloat, len);
        inQueue_.FreeTensor(w);

        CopyOut(offset, len);
        StoreScalar(group, scale);
    }

    // Group larger than a tile: pass 1 sums |W| tile by tile, pass 2 reads W
    // again and writes the codes.
    __aicore__ inline void ProcessStreamedGroup(uint64_t group, uint64_t offset)
    {
        float sum = 0.0f;
        for (uint32_t done = 0; done < tiling_.groupLen; done += tiling_.tileLen) {
            uint32_t len = Min(tiling_.tileLen, tiling_.groupLen - done);
            CopyIn(offset + done, len);
            AscendC::LocalTensor<T> w = inQueue_.template DeQue<T>();
            sum += SumAbs(ToFloat(w, len), len);
            inQueue_.FreeTensor(w);
        }
        if (tiling_.mode == kQuantizeAbsSum) {
            StoreScalar(group, sum);
            return;
        }
        float scale = ScaleFromSum(sum);
        QuantizeStreamed(offset, scale);
        StoreScalar(group, scale);
    }

    // Codes of one group with a known scale, tile by tile.
    __aicore__ inline void QuantizeStreamed(uint64_t offset, float scale)
    {
        uint32_t firstLen = Min(tiling_.tileLen, tiling_.groupLen);
        AscendC::Duplicate(divBuf_.Get<float>(), scale, static_cast<int32_t>(firstLen));
        for (uint32_t done = 0; done < tiling_.groupLen; done += tiling_.tileLen) {
            uint32_t len = Min(tiling_.tileLen, tiling_.groupLen - done);
            CopyIn(offset + done, len);

            AscendC::LocalTensor<T> w = inQueue_.template DeQue<T>();
            ComputeCodes(ToFloat(w, len), len);
            inQueue_.FreeTensor(w);

            CopyOut(offset + done, len);
        }
    }

    __aicore__ inline void CopyIn(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<T> w = inQueue_.template AllocTensor<T>();
        AscendC::DataCopyExtParams params(1, len * sizeof(T), 0, 0, 0);
        AscendC::DataCopyPadExtParams<T> padParams;
        AscendC::DataCopyPad(w, wGm_[offset], params, padParams);
        inQueue_.EnQue(w);
    }

    __aicore__ inline void CopyOut(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<int8_t> codes = outQueue_.template DeQue<int8_t>();
        AscendC::DataCopyExtParams params(1, len * sizeof(int8_t), 0, 0, 0);
        AscendC::DataCopyPad(codesGm_[offset], codes, params);
        outQueue_.FreeTensor(codes);
    }

    // W as float32: the input tensor itself for float32, else a CAST_NONE
    // widening (exact for half and bfloat16) into floatBuf.
    __aicore__ inline AscendC::LocalTensor<float> ToFloat(const AscendC::LocalTensor<T>& w, uint32_t len)
    {
        if constexpr (IsSameType<T, float>::value) {
            return w;
        } else {
            AscendC::LocalTensor<float> wFloat = floatBuf_.Get<float>();
            AscendC::Cast(wFloat, w, AscendC::RoundMode::CAST_NONE, len);
            return wFloat;
        }
    }

    __aicore__ inline float SumAbs(const AscendC::LocalTensor<float>& wFloat, uint32_t len)
    {
        AscendC::LocalTensor<float> absW = divBuf_.Get<float>();
        AscendC::LocalTensor<float> sum = sumBuf_.Get<float>();
        AscendC::Abs(absW, wFloat, static_cast<int32_t>(len));
        AscendC::ReduceSum(sum, absW, reduceBuf_.Get<float>(), static_cast<int32_t>(len));

        int32_t eventId = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::V_S));
        AscendC::SetFlag<AscendC::HardEvent::V_S>(eventId);
        AscendC::WaitFlag<AscendC::HardEvent::V_S>(eventId);
        return sum.GetValue(0);
    }

    // max(mean, eps) that keeps a NaN mean NaN, so the host check of the scales finds it.
    __aicore__ inline float ScaleFromSum(float sum) const
    {
        float mean = sum / tiling_.meanDivisor;
        return mean < tiling_.eps ? tiling_.eps : mean;
    }

    // Codes of `len` elements: divBuf must hold the broadcast scale.
    __aicore__ inline void ComputeCodes(const AscendC::LocalTensor<float>& wFloat, uint32_t len)
    {
        int32_t count = static_cast<int32_t>(len);
        AscendC::LocalTensor<float> q = floatBuf_.Get<float>();
        AscendC::LocalTensor<half> qHalf = halfBuf_.Get<half>();

        AscendC::Div(q, wFloat, divBuf_.Get<float>(), count);
        AscendC::Maxs(q, q, -1.0f, count);
        AscendC::Mins(q, q, 1.0f, count);
        AscendC::Cast(q, q, AscendC::RoundMode::CAST_RINT, len);
        AscendC::Cast(qHalf, q, AscendC::RoundMode::CAST_NONE, len);

        AscendC::LocalTensor<int8_t> codes = outQueue_.template AllocTensor<int8_t>();
        AscendC::Cast(codes, qHalf, AscendC::RoundMode::CAST_NONE, len);
        outQueue_.EnQue(codes);
    }

    __aicore__ inline void StoreScalar(uint64_t index, float value)
    {
        AscendC::LocalTensor<float> out = scaleBuf_.Get<float>();
        out.SetValue(0, value);

        int32_t toMte3 = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::S_MTE3));
        AscendC::SetFlag<AscendC::HardEvent::S_MTE3>(toMte3);
        AscendC::WaitFlag<AscendC::HardEvent::S_MTE3>(toMte3);
        AscendC::DataCopyExtParams params(1, sizeof(float), 0, 0, 0);
        AscendC::DataCopyPad(scalesGm_[index], out, params);

        // The next SetValue must wait until this copy has read the buffer.
        int32_t toScalar = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::MTE3_S));
        AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(toScalar);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(toScalar);
    }

    __aicore__ inline static uint32_t Min(uint32_t a, uint32_t b) { return a < b ? a : b; }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> inQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> outQueue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> floatBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> divBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> halfBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> reduceBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> sumBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> scaleBuf_;
    AscendC::GlobalTensor<T> wGm_;
    AscendC::GlobalTensor<int8_t> codesGm_;
    AscendC::GlobalTensor<float> scalesGm_;
    TernaryQuantizeTiling tiling_;
};

template <typename T>
__aicore__ inline void RunTernaryQuantize(GM_ADDR w, GM_ADDR codes, GM_ADDR scales,
                                          const TernaryQuantizeTiling& tiling)
{
    TernaryQuantizeKernel<T> kernel;
    kernel.Init(w, codes, scales, tiling);
    kernel.Process();
}

}  // namespace ternary_quantize_impl

extern "C" __global__ __aicore__ void ternary_quantize(GM_ADDR w, GM_ADDR codes, GM_ADDR scales, GM_ADDR tilingGm)
{
    TernaryQuantizeTiling tiling;
    LoadTiling(tiling, tilingGm);
    if (tiling.dtype == kBitcpmFloat16) {
        ternary_quantize_impl::RunTernaryQuantize<half>(w, codes, scales, tiling);
    } else if (tiling.dtype == kBitcpmBFloat16) {
        ternary_quantize_impl::RunTernaryQuantize<bfloat16_t>(w, codes, scales, tiling);
    } else {
        ternary_quantize_impl::RunTernaryQuantize<float>(w, codes, scales, tiling);
    }
}
