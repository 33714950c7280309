// act_quantize: per-token int8 activation quantization on the vector cores
// (the W1.58A8 path).
//
// Math, per row x of `rowLen` elements (float32 throughout):
//     s_x = 127 * (1 / max(max(|x|), eps))      as PyTorch evaluates 127 / tensor
//     q   = clamp(round_half_to_even(x * s_x), -128, 127)     int8
// The host keeps s_x; x_hat = q / s_x is never formed on the device, because
// the linear divides the int32 product by s_x in linear_epilogue. Rounding
// happens in float32 (Cast float -> float, CAST_RINT); the integers, exact in
// half, then go float -> half -> int8 because Atlas A2 has no float -> int8
// Cast.
//
// Memory per vector core:
//   global: reads x[first*rowLen, (first+count)*rowLen) once when a row fits a
//           tile, twice otherwise (pass 1 max |x|, pass 2 codes); writes the
//           same span of q and rowScale[first, first+count).
//   Unified Buffer (tileLen elements, see ActQuantizeTilingFor):
//           inQueue   2 x tileLen x sizeof(T)   activations, double-buffered
//           outQueue  2 x tileLen x 1            int8 codes, double-buffered
//           floatBuf  tileLen x 4                x as float32, then x * s_x
//           absBuf    tileLen x 4                |x|
//           halfBuf   tileLen x 2                codes as half
//           reduceBuf reduceTmpLen x 4           ReduceMax workspace
//           maxBuf    32 bytes                   ReduceMax result
//           scaleBuf  32 bytes                   one s_x on its way to GM
#include "kernel_common.h"

// Named (not anonymous) so all kernels can share one translation unit.
namespace act_quantize_impl {

constexpr int32_t kBufferNum = 2;

template <typename T>
class ActQuantizeKernel {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR codes, GM_ADDR rowScale, const ActQuantizeTiling& tiling)
    {
        tiling_ = tiling;
        uint64_t numel = tiling.numRows * tiling.rowLen;
        xGm_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x), numel);
        codesGm_.SetGlobalBuffer(reinterpret_cast<__gm__ int8_t*>(codes), numel);
        rowScaleGm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(rowScale), tiling.numRows);

        uint32_t tile = tiling.tileLen;
        pipe_.InitBuffer(inQueue_, kBufferNum, tile * sizeof(T));
        pipe_.InitBuffer(outQueue_, kBufferNum, tile * sizeof(int8_t));
        pipe_.InitBuffer(floatBuf_, tile * sizeof(float));
        pipe_.InitBuffer(absBuf_, tile * sizeof(float));
        pipe_.InitBuffer(halfBuf_, tile * sizeof(half));
        pipe_.InitBuffer(reduceBuf_, tiling.reduceTmpLen * sizeof(float));
        pipe_.InitBuffer(maxBuf_, 32);
        pipe_.InitBuffer(scaleBuf_, 32);
    }

    __aicore__ inline void Process()
    {
        uint64_t first = 0;
        uint64_t count = 0;
        BlockItems(tiling_.split, AscendC::GetBlockIdx(), first, count);

        for (uint64_t row = first; row < first + count; ++row) {
            uint64_t offset = row * tiling_.rowLen;
            if (tiling_.rowLen <= tiling_.tileLen) {
                ProcessResidentRow(row, offset);
            } else {
                ProcessStreamedRow(row, offset);
            }
        }
    }

private:
    __aicore__ inline void ProcessResidentRow(uint64_t row, uint64_t offset)
    {
        uint32_t len = tiling_.rowLen;
        CopyIn(offset, len);

        AscendC::LocalTensor<T> x = inQueue_.template DeQue<T>();
        AscendC::LocalTensor<float> xFloat = ToFloat(x, len);
        float scale = ScaleFromMax(MaxAbs(xFloat, len));
        ComputeCodes(xFloat, len, scale);
        inQueue_.FreeTensor(x);

        CopyOut(offset, len);
        StoreScale(row, scale);
    }

    __aicore__ inline void ProcessStreamedRow(uint64_t row, uint64_t offset)
    {
        float rowMax = 0.0f;
        for (uint32_t done = 0; done < tiling_.rowLen; done += tiling_.tileLen) {
            uint32_t len = Min(tiling_.tileLen, tiling_.rowLen - done);
            CopyIn(offset + done, len);
            AscendC::LocalTensor<T> x = inQueue_.template DeQue<T>();
            float tileMax = MaxAbs(ToFloat(x, len), len);
            // A NaN tile maximum must survive: `!(a <= b)` is true for NaN.
            rowMax = !(tileMax <= rowMax) ? tileMax : rowMax;
            inQueue_.FreeTensor(x);
        }
        float scale = ScaleFromMax(rowMax);

        for (uint32_t done = 0; done < tiling_.rowLen; done += tiling_.tileLen) {
            uint32_t len = Min(tiling_.tileLen, tiling_.rowLen - done);
            CopyIn(offset + done, len);

            AscendC::LocalTensor<T> x = inQueue_.template DeQue<T>();
            ComputeCodes(ToFloat(x, len), len, scale);
            inQueue_.FreeTensor(x);

            CopyOut(offset + done, len);
        }
        StoreScale(row, scale);
    }

    __aicore__ inline void CopyIn(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<T> x = inQueue_.template AllocTensor<T>();
        AscendC::DataCopyExtParams params(1, len * sizeof(T), 0, 0, 0);
        AscendC::DataCopyPadExtParams<T> padParams;
        AscendC::DataCopyPad(x, xGm_[offset], params, padParams);
        inQueue_.EnQue(x);
    }

    __aicore__ inline void CopyOut(uint64_t offset, uint32_t len)
    {
        AscendC::LocalTensor<int8_t> codes = outQueue_.template DeQue<int8_t>();
        AscendC::DataCopyExtParams params(1, len * sizeof(int8_t), 0, 0, 0);
        AscendC::DataCopyPad(codesGm_[offset], codes, params);
        outQueue_.FreeTensor(codes);
    }

    __aicore__ inline AscendC::LocalTensor<float> ToFloat(const AscendC::LocalTensor<T>& x, uint32_t len)
    {
        if constexpr (IsSameType<T, float>::value) {
            return x;
        } else {
            AscendC::LocalTensor<float> xFloat = floatBuf_.Get<float>();
            AscendC::Cast(xFloat, x, AscendC::RoundMode::CAST_NONE, len);
            return xFloat;
        }
    }

    __aicore__ inline float MaxAbs(const AscendC::LocalTensor<float>& xFloat, uint32_t len)
    {
        AscendC::LocalTensor<float> absX = absBuf_.Get<float>();
        AscendC::LocalTensor<float> result = maxBuf_.Get<float>();
        AscendC::Abs(absX, xFloat, static_cast<int32_t>(len));
        AscendC::ReduceMax(result, absX, reduceBuf_.Get<float>(), static_cast<int32_t>(len), false);

        int32_t eventId = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::V_S));
        AscendC::SetFlag<AscendC::HardEvent::V_S>(eventId);
        AscendC::WaitFlag<AscendC::HardEvent::V_S>(eventId);
        return result.GetValue(0);
    }

    // 127 * (1 / max), not 127 / max: PyTorch evaluates `127.0 / tensor` as
    // reciprocal(tensor) * 127 (checked with torch 2.13 on CPU), and the two
    // differ in the last bit for some maxima.
    __aicore__ inline float ScaleFromMax(float rowMax) const
    {
        float clamped = rowMax < tiling_.eps ? tiling_.eps : rowMax;
        float reciprocal = 1.0f / clamped;
        return reciprocal * 127.0f;
    }

    __aicore__ inline void ComputeCodes(const AscendC::LocalTensor<float>& xFloat, uint32_t len, float scale)
    {
        int32_t count = static_cast<int32_t>(len);
        AscendC::LocalTensor<float> q = floatBuf_.Get<float>();
        AscendC::LocalTensor<half> qHalf = halfBuf_.Get<half>();

        AscendC::Muls(q, xFloat, scale, count);
        AscendC::Cast(q, q, AscendC::RoundMode::CAST_RINT, len);
        AscendC::Maxs(q, q, -128.0f, count);
        AscendC::Mins(q, q, 127.0f, count);
        AscendC::Cast(qHalf, q, AscendC::RoundMode::CAST_NONE, len);

        AscendC::LocalTensor<int8_t> codes = outQueue_.template AllocTensor<int8_t>();
        AscendC::Cast(codes, qHalf, AscendC::RoundMode::CAST_NONE, len);
        outQueue_.EnQue(codes);
    }

    __aicore__ inline void StoreScale(uint64_t row, float value)
    {
        AscendC::LocalTensor<float> out = scaleBuf_.Get<float>();
        out.SetValue(0, value);

        int32_t toMte3 = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::S_MTE3));
        AscendC::SetFlag<AscendC::HardEvent::S_MTE3>(toMte3);
        AscendC::WaitFlag<AscendC::HardEvent::S_MTE3>(toMte3);
        AscendC::DataCopyExtParams params(1, sizeof(float), 0, 0, 0);
        AscendC::DataCopyPad(rowScaleGm_[row], out, params);

        int32_t toScalar = static_cast<int32_t>(pipe_.FetchEventID(AscendC::HardEvent::MTE3_S));
        AscendC::SetFlag<AscendC::HardEvent::MTE3_S>(toScalar);
        AscendC::WaitFlag<AscendC::HardEvent::MTE3_S>(toScalar);
    }

    __aicore__ inline static uint32_t Min(uint32_t a, uint32_t b) { return a < b ? a : b; }

    AscendC::TPipe pipe_;
    AscendC::TQue<AscendC::QuePosition::VECIN, kBufferNum> inQueue_;
    AscendC::TQue<AscendC::QuePosition::VECOUT, kBufferNum> outQueue_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> floatBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> absBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> halfBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> reduceBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> maxBuf_;
    AscendC::TBuf<AscendC::TPosition::VECCALC> scaleBuf_;
    AscendC::GlobalTensor<T> xGm_;
    AscendC::GlobalTensor<int8_t> codesGm_;
    AscendC::GlobalTensor<float> rowScaleGm_;
    ActQuantizeTiling tiling_;
};

template <typename T>
__aicore__ inline void RunActQuantize(GM_ADDR x, GM_ADDR codes, GM_ADDR rowScale, const ActQuantizeTiling& tiling)
{
    ActQuantizeKernel<T> kernel;
    kernel.Init(x, codes, rowScale, tiling);
    kernel.Process();
}

}  // namespace act_quantize_impl

extern "C" __global__ __aicore__ void act_quantize(GM_ADDR x, GM_ADDR codes, GM_ADDR rowScale, GM_ADDR tilingGm)
{
    ActQuantizeTiling tiling;
    LoadTiling(tiling, tilingGm);
    if (tiling.dtype == kBitcpmFloat16) {
        act_quantize_impl::RunActQuantize<half>(x, codes, rowScale, tiling);
    } else if (tiling.dtype == kBitcpmBFloat16) {
        act_quantize_impl::RunActQuantize<bfloat16_t>(x, codes, rowScale, tiling);
    } else {
        act_quantize_impl::RunActQuantize<float>(x, codes, rowScale, tiling);
    }
}
