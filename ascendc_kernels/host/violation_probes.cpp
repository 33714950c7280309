// Small kernels that each break one Atlas A2 rule, so the tests can check
// that the host AscendC subset rejects them with a clear message. They are
// test fixtures only and are never built for an NPU.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "kernel_operator.h"

namespace {

constexpr uint32_t kLen = 256;

// DataCopy of 100 half values = 200 bytes, not a multiple of 32.
void MisalignedDataCopy(GM_ADDR src)
{
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> queue;
    AscendC::GlobalTensor<half> gm;
    gm.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(src), kLen);
    pipe.InitBuffer(queue, 1, kLen * sizeof(half));
    AscendC::LocalTensor<half> local = queue.AllocTensor<half>();
    AscendC::DataCopy(local, gm, 100);
    queue.FreeTensor(local);
}

// Two 100 KB buffers: 200 KB of the 192 KB Unified Buffer.
void UnifiedBufferOverflow(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> first;
    AscendC::TBuf<AscendC::TPosition::VECCALC> second;
    pipe.InitBuffer(first, 100 * 1024);
    pipe.InitBuffer(second, 100 * 1024);
}

// AllocTensor with no FreeTensor before the kernel ends.
void MissingFreeTensor(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 1> queue;
    pipe.InitBuffer(queue, 1, kLen * sizeof(float));
    AscendC::LocalTensor<float> local = queue.AllocTensor<float>();
    AscendC::Duplicate(local, 1.0f, static_cast<int32_t>(kLen));
}

// float -> int8 directly: not in the Atlas A2 Cast table.
void FloatToInt8Cast(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> floats;
    AscendC::TBuf<AscendC::TPosition::VECCALC> bytes;
    pipe.InitBuffer(floats, kLen * sizeof(float));
    pipe.InitBuffer(bytes, kLen);
    AscendC::LocalTensor<float> src = floats.Get<float>();
    AscendC::Duplicate(src, 0.5f, static_cast<int32_t>(kLen));
    AscendC::Cast(bytes.Get<int8_t>(), src, AscendC::RoundMode::CAST_RINT, kLen);
}

// Compare on 40 floats = 160 bytes, not a whole 256-byte span.
void PartialCompareSpan(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> values;
    AscendC::TBuf<AscendC::TPosition::VECCALC> mask;
    pipe.InitBuffer(values, kLen * sizeof(float));
    pipe.InitBuffer(mask, kLen);
    AscendC::LocalTensor<float> a = values.Get<float>();
    AscendC::Duplicate(a, 1.0f, static_cast<int32_t>(kLen));
    AscendC::Compare(mask.Get<uint8_t>(), a, a, AscendC::CMPMODE::LT, 40);
}

// A tensor used after FreeTensor returned it to the queue.
void UseAfterFree(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::QuePosition::VECOUT, 1> queue;
    pipe.InitBuffer(queue, 1, kLen * sizeof(float));
    AscendC::LocalTensor<float> local = queue.AllocTensor<float>();
    queue.FreeTensor(local);
    AscendC::Duplicate(local, 1.0f, static_cast<int32_t>(kLen));
}

// DataCopyPad that reads 8 floats past the end of a 256-float global buffer.
void GlobalOutOfBounds(GM_ADDR src)
{
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> queue;
    AscendC::GlobalTensor<float> gm;
    gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src), kLen);
    pipe.InitBuffer(queue, 1, kLen * sizeof(float));
    AscendC::LocalTensor<float> local = queue.AllocTensor<float>();
    AscendC::DataCopyExtParams params(1, kLen * sizeof(float), 0, 0, 0);
    AscendC::DataCopyPadExtParams<float> pad;
    AscendC::DataCopyPad(local, gm[8], params, pad);
    queue.FreeTensor(local);
}

// DeQue with nothing enqueued.
void DeQueWithoutEnQue(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TQue<AscendC::QuePosition::VECIN, 1> queue;
    pipe.InitBuffer(queue, 1, kLen * sizeof(float));
    AscendC::LocalTensor<float> local = queue.DeQue<float>();
    queue.FreeTensor(local);
}

// ReduceSum of 4096 floats with an 8-float workspace (64 needed).
void SmallReduceWorkspace(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> values;
    AscendC::TBuf<AscendC::TPosition::VECCALC> work;
    AscendC::TBuf<AscendC::TPosition::VECCALC> result;
    pipe.InitBuffer(values, 4096 * sizeof(float));
    pipe.InitBuffer(work, 8 * sizeof(float));
    pipe.InitBuffer(result, 32);
    AscendC::LocalTensor<float> src = values.Get<float>();
    AscendC::Duplicate(src, 1.0f, 4096);
    AscendC::ReduceSum(result.Get<float>(), src, work.Get<float>(), 4096);
}

// A vector operand 4 bytes past a 32-byte boundary.
void MisalignedOperand(GM_ADDR)
{
    AscendC::TPipe pipe;
    AscendC::TBuf<AscendC::TPosition::VECCALC> values;
    pipe.InitBuffer(values, kLen * sizeof(float));
    AscendC::LocalTensor<float> src = values.Get<float>();
    AscendC::Abs(src[1], src[1], 64);
}

using Probe = void (*)(GM_ADDR);

struct NamedProbe {
    const char* name;
    Probe probe;
};

constexpr NamedProbe kProbes[] = {
    {"misaligned_data_copy", MisalignedDataCopy},
    {"unified_buffer_overflow", UnifiedBufferOverflow},
    {"missing_free_tensor", MissingFreeTensor},
    {"float_to_int8_cast", FloatToInt8Cast},
    {"partial_compare_span", PartialCompareSpan},
    {"use_after_free", UseAfterFree},
    {"global_out_of_bounds", GlobalOutOfBounds},
    {"deque_without_enque", DeQueWithoutEnQue},
    {"small_reduce_workspace", SmallReduceWorkspace},
    {"misaligned_operand", MisalignedOperand},
};

}  // namespace

// Run probe `name` on a grid of `blockNum` cores with a 256-float buffer.
// Returns 0 when it ran without error, 1 with the message in `err`, and 2
// when no probe has that name.
extern "C" int bitcpm_host_run_probe(const char* name, uint32_t blockNum, char* err, size_t errLen)
{
    static float buffer[kLen] = {};
    for (const NamedProbe& entry : kProbes) {
        if (std::strcmp(entry.name, name) != 0) {
            continue;
        }
        try {
            ascendc_host::LaunchGrid(entry.name, blockNum,
                                     [&]() { entry.probe(reinterpret_cast<GM_ADDR>(buffer)); });
            return 0;
        } catch (const std::exception& error) {
            std::snprintf(err, errLen, "%s", error.what());
            return 1;
        }
    }
    return 2;
}
