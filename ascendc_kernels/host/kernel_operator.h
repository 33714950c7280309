// Host implementation of the AscendC subset that the bitcpm kernels use, so the
// unchanged kernel sources compile with g++ and run on a CPU in CI.
//
// It is strict about the Atlas A2 (dav-2201) limits the kernels must respect,
// and a violation throws ascendc_host::LimitError naming the kernel, the block
// index, the call and the numbers:
//   - Unified Buffer capacity: 192 KB per vector core (TPipe::InitBuffer);
//   - 32-byte aligned local tensor addresses and DataCopy lengths;
//   - AllocTensor/FreeTensor and EnQue/DeQue pairing, use after FreeTensor;
//   - the A2 Cast table (no float -> int8, no int8 -> float);
//   - Compare works on whole 256-byte spans;
//   - ReduceSum/ReduceMax workspace sizes from the AscendC documentation;
//   - GlobalTensor bounds given to SetGlobalBuffer.
// Fresh Unified Buffer memory and the padding DataCopyPad leaves after a
// block are filled with 0xFF bytes (NaN for floats, -1 for integers), so a
// kernel that reads data it never loaded produces visibly wrong output.
//
// Signatures follow the AscendC headers of Huawei's asc-devkit
// (include/basic_api/*.h and include/adv_api/matmul/matmul.h). Only the
// overloads the kernels call exist here. Vector arithmetic is done element by
// element in the operand type, which matches the hardware for IEEE float32
// operations; ReduceSum adds in a fixed order that need not match the
// hardware's tree order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#define __aicore__
#define __global__
#define __gm__
#define GM_ADDR uint8_t*

using half = _Float16;

// bfloat16 storage with round-to-nearest-even conversion from float.
struct bfloat16_t {
    uint16_t bits = 0;
    bfloat16_t() = default;
    explicit bfloat16_t(float value) { bits = FromFloat(value); }
    explicit operator float() const
    {
        uint32_t word = static_cast<uint32_t>(bits) << 16;
        float value;
        std::memcpy(&value, &word, sizeof(value));
        return value;
    }
    static uint16_t FromFloat(float value)
    {
        uint32_t word;
        std::memcpy(&word, &value, sizeof(word));
        if (std::isnan(value)) {
            return 0x7FC0;
        }
        uint32_t roundingBias = 0x7FFF + ((word >> 16) & 1);
        return static_cast<uint16_t>((word + roundingBias) >> 16);
    }
};

namespace ascendc_host {

constexpr uint32_t kUbBytes = 192 * 1024;
constexpr uint32_t kBlockBytes = 32;
constexpr uint32_t kRepeatBytes = 256;

struct LimitError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Launch state of the emulated core that is running.
struct CoreContext {
    std::string kernel = "<no kernel>";
    int64_t blockIdx = 0;
    int64_t blockNum = 1;
    std::vector<std::string> leaks;
};

inline CoreContext& Context()
{
    static thread_local CoreContext context;
    return context;
}

[[noreturn]] inline void Fail(const std::string& call, const std::string& detail)
{
    const CoreContext& ctx = Context();
    std::ostringstream message;
    message << "kernel " << ctx.kernel << " block " << ctx.blockIdx << "/" << ctx.blockNum << ": " << call << ": "
            << detail;
    throw LimitError(message.str());
}

template <typename T>
inline const char* TypeName()
{
    if constexpr (std::is_same_v<T, float>) return "float";
    else if constexpr (std::is_same_v<T, half>) return "half";
    else if constexpr (std::is_same_v<T, bfloat16_t>) return "bfloat16_t";
    else if constexpr (std::is_same_v<T, int8_t>) return "int8_t";
    else if constexpr (std::is_same_v<T, uint8_t>) return "uint8_t";
    else if constexpr (std::is_same_v<T, int16_t>) return "int16_t";
    else if constexpr (std::is_same_v<T, int32_t>) return "int32_t";
    else if constexpr (std::is_same_v<T, int64_t>) return "int64_t";
    else if constexpr (std::is_same_v<T, uint64_t>) return "uint64_t";
    else return "unknown";
}

template <typename T>
inline double ToDouble(T value)
{
    if constexpr (std::is_same_v<T, bfloat16_t>) return static_cast<double>(static_cast<float>(value));
    else return static_cast<double>(value);
}

// One Unified Buffer slot handed out by a queue or a TBuf. `generation`
// changes on every FreeTensor so a tensor kept after FreeTensor is detected.
struct SlotState {
    std::string owner;
    bool allocated = false;
    uint64_t generation = 0;
};

}  // namespace ascendc_host

namespace AscendC {

enum class TPosition : uint8_t { GM, A1, A2, B1, B2, C1, C2, CO1, CO2, VECIN, VECOUT, VECCALC, LCM = VECCALC };
using QuePosition = TPosition;

enum class RoundMode : uint8_t { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };

enum class CMPMODE : uint8_t { LT = 0, GT, EQ, LE, GE, NE };

enum class HardEvent : uint8_t { MTE2_MTE3, MTE3_MTE2, MTE2_V, V_MTE2, MTE3_V, V_MTE3, S_V, V_S, MTE2_S, S_MTE2, MTE3_S, S_MTE3 };

enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_FIX };

using event_t = int32_t;

inline int64_t GetBlockIdx() { return ascendc_host::Context().blockIdx; }
inline int64_t GetBlockNum() { return ascendc_host::Context().blockNum; }

// Pipe synchronisation orders hardware pipelines. The host runs every call in
// program order, so these only exist to let the kernel sources compile.
template <HardEvent event>
inline void SetFlag(int32_t) {}
template <HardEvent event>
inline void WaitFlag(int32_t) {}
template <pipe_t pipe>
inline void PipeBarrier() {}

template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(uint8_t* ub, uint32_t byteOffset, uint32_t byteSize, std::shared_ptr<ascendc_host::SlotState> slot,
                uint64_t generation)
        : ub_(ub), byteOffset_(byteOffset), byteSize_(byteSize), slot_(std::move(slot)), generation_(generation)
    {}

    T* Data(const char* call) const
    {
        CheckLive(call);
        return reinterpret_cast<T*>(ub_ + byteOffset_);
    }
    void CheckLive(const char* call) const
    {
        if (ub_ == nullptr) {
            ascendc_host::Fail(call, "LocalTensor was never allocated");
        }
        if (slot_ && (!slot_->allocated || slot_->generation != generation_)) {
            ascendc_host::Fail(call, "LocalTensor from " + slot_->owner + " is used after FreeTensor");
        }
    }
    void CheckAligned(const char* call, const char* operand) const
    {
        if (byteOffset_ % ascendc_host::kBlockBytes != 0) {
            ascendc_host::Fail(call, std::string(operand) + " starts at Unified Buffer byte " +
                                         std::to_string(byteOffset_) + ", which is not 32-byte aligned");
        }
    }
    void CheckCount(const char* call, const char* operand, uint64_t count) const
    {
        if (count * sizeof(T) > byteSize_) {
            ascendc_host::Fail(call, std::string(operand) + " needs " + std::to_string(count) + " x " +
                                         ascendc_host::TypeName<T>() + " = " + std::to_string(count * sizeof(T)) +
                                         " bytes but the tensor has " + std::to_string(byteSize_) + " bytes");
        }
    }
    uint32_t GetSize() const { return byteSize_ / sizeof(T); }
    uint32_t ByteOffset() const { return byteOffset_; }
    const std::shared_ptr<ascendc_host::SlotState>& Slot() const { return slot_; }
    uint64_t Generation() const { return generation_; }

    T GetValue(uint32_t index) const
    {
        CheckCount("LocalTensor::GetValue", "index", static_cast<uint64_t>(index) + 1);
        return Data("LocalTensor::GetValue")[index];
    }
    void SetValue(uint32_t index, T value) const
    {
        CheckCount("LocalTensor::SetValue", "index", static_cast<uint64_t>(index) + 1);
        Data("LocalTensor::SetValue")[index] = value;
    }
    LocalTensor operator[](uint32_t offset) const
    {
        CheckCount("LocalTensor::operator[]", "offset", offset);
        return LocalTensor(ub_, byteOffset_ + offset * sizeof(T), byteSize_ - offset * sizeof(T), slot_, generation_);
    }
    template <typename U>
    LocalTensor<U> ReinterpretCast() const
    {
        return LocalTensor<U>(ub_, byteOffset_, byteSize_, slot_, generation_);
    }

private:
    uint8_t* ub_ = nullptr;
    uint32_t byteOffset_ = 0;
    uint32_t byteSize_ = 0;
    std::shared_ptr<ascendc_host::SlotState> slot_;
    uint64_t generation_ = 0;
};

template <typename T>
class GlobalTensor {
public:
    // A size of 0 leaves the buffer unbounded, as in the AscendC API.
    void SetGlobalBuffer(__gm__ T* buffer, uint64_t bufferSize = 0)
    {
        data_ = buffer;
        size_ = bufferSize;
    }
    GlobalTensor operator[](uint64_t offset) const
    {
        if (size_ != 0 && offset > size_) {
            ascendc_host::Fail("GlobalTensor::operator[]", "offset " + std::to_string(offset) +
                                                                " is past the buffer of " + std::to_string(size_) +
                                                                " elements");
        }
        GlobalTensor sub;
        sub.data_ = data_ + offset;
        sub.size_ = size_ == 0 ? 0 : size_ - offset;
        sub.origin_ = origin_ + offset;
        return sub;
    }
    T GetValue(uint64_t index) const
    {
        CheckRange("GlobalTensor::GetValue", index, 1);
        return data_[index];
    }
    void SetValue(uint64_t index, T value) const
    {
        CheckRange("GlobalTensor::SetValue", index, 1);
        data_[index] = value;
    }
    void CheckRange(const char* call, uint64_t first, uint64_t count) const
    {
        if (data_ == nullptr) {
            ascendc_host::Fail(call, "GlobalTensor has no buffer (SetGlobalBuffer was not called)");
        }
        if (size_ != 0 && first + count > size_) {
            ascendc_host::Fail(call, "reads or writes elements [" + std::to_string(origin_ + first) + ", " +
                                         std::to_string(origin_ + first + count) + ") of a global buffer of " +
                                         std::to_string(origin_ + size_) + " elements");
        }
    }
    T* GetPhyAddr() const { return data_; }
    uint64_t GetSize() const { return size_; }

private:
    T* data_ = nullptr;
    uint64_t size_ = 0;
    uint64_t origin_ = 0;  // offset from the SetGlobalBuffer start, for messages
};

class TPipe;

// The TPipe currently constructed on this core.
inline TPipe*& CurrentPipe()
{
    static thread_local TPipe* pipe = nullptr;
    return pipe;
}

class TPipe {
public:
    TPipe()
    {
        ub_.assign(ascendc_host::kUbBytes, 0xFF);
        CurrentPipe() = this;
    }
    ~TPipe()
    {
        if (CurrentPipe() == this) {
            CurrentPipe() = nullptr;
        }
    }
    TPipe(const TPipe&) = delete;
    TPipe& operator=(const TPipe&) = delete;

    template <class Queue>
    bool InitBuffer(Queue& queue, uint8_t num, uint32_t len)
    {
        queue.Attach(this, Reserve("TPipe::InitBuffer(TQue)", num, len), num, AlignedLength(len));
        return true;
    }
    template <class Buffer>
    bool InitBuffer(Buffer& buffer, uint32_t len)
    {
        buffer.Attach(this, Reserve("TPipe::InitBuffer(TBuf)", 1, len), AlignedLength(len));
        return true;
    }
    int32_t FetchEventID(HardEvent) { return 0; }
    void Destroy() {}
    uint8_t* Ub() { return ub_.data(); }
    uint32_t UsedBytes() const { return used_; }

private:
    static uint32_t AlignedLength(uint32_t len)
    {
        return (len + ascendc_host::kBlockBytes - 1) / ascendc_host::kBlockBytes * ascendc_host::kBlockBytes;
    }
    uint32_t Reserve(const char* call, uint8_t num, uint32_t len)
    {
        if (len == 0 || num == 0) {
            ascendc_host::Fail(call, "buffer of " + std::to_string(num) + " x " + std::to_string(len) +
                                         " bytes is empty");
        }
        uint64_t need = static_cast<uint64_t>(num) * AlignedLength(len);
        if (used_ + need > ascendc_host::kUbBytes) {
            ascendc_host::Fail(call, std::to_string(num) + " x " + std::to_string(AlignedLength(len)) +
                                         " bytes on top of " + std::to_string(used_) +
                                         " bytes already reserved exceeds the Unified Buffer of " +
                                         std::to_string(ascendc_host::kUbBytes) + " bytes");
        }
        uint32_t start = used_;
        used_ += static_cast<uint32_t>(need);
        return start;
    }

    std::vector<uint8_t> ub_;
    uint32_t used_ = 0;
};

inline TPipe* GetTPipePtr()
{
    if (CurrentPipe() == nullptr) {
        ascendc_host::Fail("GetTPipePtr", "no TPipe has been constructed on this core");
    }
    return CurrentPipe();
}

template <TPosition pos, int32_t depth>
class TQue {
public:
    TQue() = default;
    ~TQue()
    {
        std::string leak = LeakReport();
        if (!leak.empty()) {
            ascendc_host::Context().leaks.push_back(leak);
        }
    }
    TQue(const TQue&) = delete;
    TQue& operator=(const TQue&) = delete;

    void Attach(TPipe* pipe, uint32_t start, uint8_t num, uint32_t len)
    {
        pipe_ = pipe;
        start_ = start;
        len_ = len;
        slots_.clear();
        for (uint8_t i = 0; i < num; ++i) {
            auto slot = std::make_shared<ascendc_host::SlotState>();
            slot->owner = "TQue(depth " + std::to_string(depth) + ") buffer " + std::to_string(i);
            slots_.push_back(slot);
        }
    }

    template <typename T>
    LocalTensor<T> AllocTensor()
    {
        for (size_t i = 0; i < slots_.size(); ++i) {
            if (!slots_[i]->allocated) {
                slots_[i]->allocated = true;
                return LocalTensor<T>(pipe_->Ub(), start_ + static_cast<uint32_t>(i) * len_, len_, slots_[i],
                                      slots_[i]->generation);
            }
        }
        ascendc_host::Fail("TQue::AllocTensor", "all " + std::to_string(slots_.size()) +
                                                    " buffers of the queue are allocated; a FreeTensor is missing");
    }
    template <typename T>
    bool EnQue(const LocalTensor<T>& tensor)
    {
        tensor.CheckLive("TQue::EnQue");
        if (!Owns(tensor)) {
            ascendc_host::Fail("TQue::EnQue", "tensor was not allocated from this queue");
        }
        if (static_cast<int32_t>(queued_.size()) >= depth) {
            ascendc_host::Fail("TQue::EnQue", "queue of depth " + std::to_string(depth) +
                                                  " is full; a DeQue is missing");
        }
        queued_.push_back(tensor.ByteOffset());
        return true;
    }
    template <typename T>
    LocalTensor<T> DeQue()
    {
        if (queued_.empty()) {
            ascendc_host::Fail("TQue::DeQue", "queue is empty; the EnQue for this DeQue is missing");
        }
        uint32_t offset = queued_.front();
        queued_.erase(queued_.begin());
        size_t index = (offset - start_) / len_;
        return LocalTensor<T>(pipe_->Ub(), offset, len_, slots_[index], slots_[index]->generation);
    }
    template <typename T>
    void FreeTensor(const LocalTensor<T>& tensor)
    {
        tensor.CheckLive("TQue::FreeTensor");
        if (!Owns(tensor)) {
            ascendc_host::Fail("TQue::FreeTensor", "tensor was not allocated from this queue");
        }
        for (uint32_t offset : queued_) {
            if (offset == tensor.ByteOffset()) {
                ascendc_host::Fail("TQue::FreeTensor", "tensor is still enqueued; DeQue it before FreeTensor");
            }
        }
        tensor.Slot()->allocated = false;
        tensor.Slot()->generation += 1;
    }
    std::string LeakReport() const
    {
        size_t live = 0;
        for (const auto& slot : slots_) {
            live += slot->allocated ? 1 : 0;
        }
        if (live != 0 || !queued_.empty()) {
            return "TQue(depth " + std::to_string(depth) + ") ends with tensors not freed: " + std::to_string(live) +
                   ", tensors not dequeued: " + std::to_string(queued_.size());
        }
        return "";
    }

private:
    template <typename T>
    bool Owns(const LocalTensor<T>& tensor) const
    {
        for (const auto& slot : slots_) {
            if (slot == tensor.Slot()) {
                return true;
            }
        }
        return false;
    }

    TPipe* pipe_ = nullptr;
    uint32_t start_ = 0;
    uint32_t len_ = 0;
    std::vector<std::shared_ptr<ascendc_host::SlotState>> slots_;
    std::vector<uint32_t> queued_;
};

template <TPosition pos = TPosition::VECCALC>
class TBuf {
public:
    void Attach(TPipe* pipe, uint32_t start, uint32_t len)
    {
        pipe_ = pipe;
        start_ = start;
        len_ = len;
    }
    template <typename T>
    LocalTensor<T> Get() const
    {
        if (pipe_ == nullptr) {
            ascendc_host::Fail("TBuf::Get", "TBuf was not given memory with TPipe::InitBuffer");
        }
        return LocalTensor<T>(pipe_->Ub(), start_, len_, nullptr, 0);
    }
    template <typename T>
    LocalTensor<T> Get(uint32_t count) const
    {
        LocalTensor<T> whole = Get<T>();
        whole.CheckCount("TBuf::Get", "requested length", count);
        return LocalTensor<T>(pipe_->Ub(), start_, count * sizeof(T), nullptr, 0);
    }

private:
    TPipe* pipe_ = nullptr;
    uint32_t start_ = 0;
    uint32_t len_ = 0;
};

// ---------------------------------------------------------------- data moves

struct DataCopyExtParams {
    DataCopyExtParams() = default;
    DataCopyExtParams(uint16_t count, uint32_t len, uint32_t srcStrideIn, uint32_t dstStrideIn, uint32_t rsvIn)
        : blockCount(count), blockLen(len), srcStride(srcStrideIn), dstStride(dstStrideIn), rsv(rsvIn)
    {}
    uint16_t blockCount = 1;
    uint32_t blockLen = 0;
    uint32_t srcStride = 0;
    uint32_t dstStride = 0;
    uint32_t rsv = 0;
};

template <typename T>
struct DataCopyPadExtParams {
    DataCopyPadExtParams() = default;
    DataCopyPadExtParams(bool isPadValue, uint8_t leftPadValue, uint8_t rightPadValue, T padValue)
        : isPad(isPadValue), leftPadding(leftPadValue), rightPadding(rightPadValue), paddingValue(padValue)
    {}
    bool isPad = false;
    uint8_t leftPadding = 0;
    uint8_t rightPadding = 0;
    T paddingValue{};
};

namespace host_detail {

template <typename T>
inline void CheckCopyLength(const char* call, uint32_t count)
{
    uint64_t bytes = static_cast<uint64_t>(count) * sizeof(T);
    if (bytes % ascendc_host::kBlockBytes != 0) {
        ascendc_host::Fail(call, std::to_string(count) + " x " + ascendc_host::TypeName<T>() + " = " +
                                     std::to_string(bytes) +
                                     " bytes is not a multiple of 32 bytes; use DataCopyPad for unaligned lengths");
    }
}

inline uint32_t RoundUpBlock(uint32_t bytes)
{
    return (bytes + ascendc_host::kBlockBytes - 1) / ascendc_host::kBlockBytes * ascendc_host::kBlockBytes;
}

template <typename T>
inline void CheckPadParams(const char* call, const DataCopyExtParams& params)
{
    if (params.blockCount == 0 || params.blockCount > 4095) {
        ascendc_host::Fail(call, "blockCount " + std::to_string(params.blockCount) + " is outside [1, 4095]");
    }
    if (params.blockLen % sizeof(T) != 0 || params.blockLen > 2097151) {
        ascendc_host::Fail(call, "blockLen " + std::to_string(params.blockLen) + " bytes is not a multiple of sizeof(" +
                                     ascendc_host::TypeName<T>() + ") or exceeds 2097151");
    }
}

}  // namespace host_detail

template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const uint32_t count)
{
    const char* call = "DataCopy(GM->UB)";
    host_detail::CheckCopyLength<T>(call, count);
    dst.CheckAligned(call, "dst");
    dst.CheckCount(call, "dst", count);
    src.CheckRange(call, 0, count);
    std::memcpy(dst.Data(call), src.GetPhyAddr(), static_cast<size_t>(count) * sizeof(T));
}

template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const uint32_t count)
{
    const char* call = "DataCopy(UB->GM)";
    host_detail::CheckCopyLength<T>(call, count);
    src.CheckAligned(call, "src");
    src.CheckCount(call, "src", count);
    dst.CheckRange(call, 0, count);
    std::memcpy(dst.GetPhyAddr(), src.Data(call), static_cast<size_t>(count) * sizeof(T));
}

// GM -> UB. GM strides are in bytes, UB strides in 32-byte blocks, and every
// block lands 32-byte aligned in the Unified Buffer.
template <typename T>
inline void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& params,
                        const DataCopyPadExtParams<T>& padParams)
{
    const char* call = "DataCopyPad(GM->UB)";
    host_detail::CheckPadParams<T>(call, params);
    dst.CheckAligned(call, "dst");
    if (padParams.isPad || padParams.leftPadding != 0 || padParams.rightPadding != 0) {
        ascendc_host::Fail(call, "explicit padding is not emulated; the kernels use isPad = false");
    }
    uint32_t dstBlockBytes = host_detail::RoundUpBlock(params.blockLen) + params.dstStride * ascendc_host::kBlockBytes;
    uint64_t ubEnd = static_cast<uint64_t>(params.blockCount - 1) * dstBlockBytes +
                     host_detail::RoundUpBlock(params.blockLen);
    dst.CheckCount(call, "dst", ubEnd / sizeof(T));
    uint64_t srcStep = static_cast<uint64_t>(params.blockLen) + params.srcStride;
    uint64_t srcElems = ((params.blockCount - 1) * srcStep + params.blockLen) / sizeof(T);
    src.CheckRange(call, 0, srcElems);

    uint8_t* ub = reinterpret_cast<uint8_t*>(dst.Data(call));
    const uint8_t* gm = reinterpret_cast<const uint8_t*>(src.GetPhyAddr());
    for (uint32_t block = 0; block < params.blockCount; ++block) {
        uint8_t* out = ub + static_cast<uint64_t>(block) * dstBlockBytes;
        std::memcpy(out, gm + block * srcStep, params.blockLen);
        std::memset(out + params.blockLen, 0xFF, host_detail::RoundUpBlock(params.blockLen) - params.blockLen);
    }
}

// UB -> GM. UB strides are in 32-byte blocks and GM strides in bytes. Exactly
// blockLen bytes per block reach global memory.
template <typename T>
inline void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& params)
{
    const char* call = "DataCopyPad(UB->GM)";
    host_detail::CheckPadParams<T>(call, params);
    src.CheckAligned(call, "src");
    uint32_t srcBlockBytes = host_detail::RoundUpBlock(params.blockLen) + params.srcStride * ascendc_host::kBlockBytes;
    uint64_t ubEnd = static_cast<uint64_t>(params.blockCount - 1) * srcBlockBytes + params.blockLen;
    src.CheckCount(call, "src", (ubEnd + sizeof(T) - 1) / sizeof(T));
    uint64_t dstStep = static_cast<uint64_t>(params.blockLen) + params.dstStride;
    uint64_t dstElems = ((params.blockCount - 1) * dstStep + params.blockLen) / sizeof(T);
    dst.CheckRange(call, 0, dstElems);

    const uint8_t* ub = reinterpret_cast<const uint8_t*>(src.Data(call));
    uint8_t* gm = reinterpret_cast<uint8_t*>(dst.GetPhyAddr());
    for (uint32_t block = 0; block < params.blockCount; ++block) {
        std::memcpy(gm + block * dstStep, ub + static_cast<uint64_t>(block) * srcBlockBytes, params.blockLen);
    }
}

// ------------------------------------------------------------ vector compute

namespace host_detail {

template <typename T>
inline void CheckVectorType(const char* call)
{
    if constexpr (!std::is_same_v<T, half> && !std::is_same_v<T, float>) {
        ascendc_host::Fail(call, std::string("operand type ") + ascendc_host::TypeName<T>() +
                                     " is not supported on Atlas A2 (half or float only)");
    }
}

template <typename T>
inline void CheckOperand(const char* call, const char* name, const LocalTensor<T>& tensor, int32_t count)
{
    if (count < 0) {
        ascendc_host::Fail(call, "count " + std::to_string(count) + " is negative");
    }
    tensor.CheckAligned(call, name);
    tensor.CheckCount(call, name, static_cast<uint64_t>(count));
}

template <typename T, typename Op>
inline void Unary(const char* call, const LocalTensor<T>& dst, const LocalTensor<T>& src, int32_t count, Op op)
{
    CheckVectorType<T>(call);
    CheckOperand(call, "dst", dst, count);
    CheckOperand(call, "src", src, count);
    T* out = dst.Data(call);
    const T* in = src.Data(call);
    for (int32_t i = 0; i < count; ++i) {
        out[i] = op(in[i]);
    }
}

template <typename T, typename Op>
inline void Binary(const char* call, const LocalTensor<T>& dst, const LocalTensor<T>& src0,
                   const LocalTensor<T>& src1, int32_t count, Op op)
{
    CheckVectorType<T>(call);
    CheckOperand(call, "dst", dst, count);
    CheckOperand(call, "src0", src0, count);
    CheckOperand(call, "src1", src1, count);
    T* out = dst.Data(call);
    const T* a = src0.Data(call);
    const T* b = src1.Data(call);
    for (int32_t i = 0; i < count; ++i) {
        out[i] = op(a[i], b[i]);
    }
}

// Elements of the first reduction round (one per 256-byte repeat), rounded
// up to whole 32-byte blocks: the ReduceSum workspace formula of the AscendC
// documentation.
template <typename T>
inline uint32_t FirstRoundElements(int32_t count)
{
    uint32_t perRepeat = ascendc_host::kRepeatBytes / sizeof(T);
    uint32_t perBlock = ascendc_host::kBlockBytes / sizeof(T);
    uint32_t repeats = count < static_cast<int32_t>(perRepeat) ? 1 : (static_cast<uint32_t>(count) + perRepeat - 1) / perRepeat;
    return (repeats + perBlock - 1) / perBlock * perBlock;
}

}  // namespace host_detail

template <typename T>
inline void Abs(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count)
{
    host_detail::Unary("Abs", dst, src, count, [](T v) { return v < T(0) ? T(-v) : v; });
}

template <typename T, bool isSetMask = true>
inline void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalarValue, const int32_t& count)
{
    host_detail::Unary("Muls", dst, src, count, [scalarValue](T v) { return T(v * scalarValue); });
}

template <typename T, bool isSetMask = true>
inline void Adds(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalarValue, const int32_t& count)
{
    host_detail::Unary("Adds", dst, src, count, [scalarValue](T v) { return T(v + scalarValue); });
}

template <typename T, bool isSetMask = true>
inline void Maxs(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalarValue, const int32_t& count)
{
    host_detail::Unary("Maxs", dst, src, count, [scalarValue](T v) { return v > scalarValue ? v : scalarValue; });
}

template <typename T, bool isSetMask = true>
inline void Mins(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalarValue, const int32_t& count)
{
    host_detail::Unary("Mins", dst, src, count, [scalarValue](T v) { return v < scalarValue ? v : scalarValue; });
}

template <typename T>
inline void Add(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,
                const int32_t& count)
{
    host_detail::Binary("Add", dst, src0, src1, count, [](T a, T b) { return T(a + b); });
}

template <typename T>
inline void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,
                const int32_t& count)
{
    host_detail::Binary("Mul", dst, src0, src1, count, [](T a, T b) { return T(a * b); });
}

// IEEE division, element by element.
template <typename T>
inline void Div(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,
                const int32_t& count)
{
    host_detail::Binary("Div", dst, src0, src1, count, [](T a, T b) { return T(a / b); });
}

template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalarValue, const int32_t& count)
{
    const char* call = "Duplicate";
    if constexpr (!std::is_same_v<T, half> && !std::is_same_v<T, float> && !std::is_same_v<T, int16_t> &&
                  !std::is_same_v<T, int32_t> && !std::is_same_v<T, uint16_t> && !std::is_same_v<T, uint32_t>) {
        ascendc_host::Fail(call, std::string("operand type ") + ascendc_host::TypeName<T>() +
                                     " is not supported on Atlas A2");
    }
    host_detail::CheckOperand(call, "dst", dst, count);
    T* out = dst.Data(call);
    for (int32_t i = 0; i < count; ++i) {
        out[i] = scalarValue;
    }
}

// Sum of the first `count` elements into dst[0]. The host adds each 256-byte
// repeat first and then the repeat sums in order, one of the orders the
// AscendC documentation describes.
template <typename T, bool isSetMask = true>
inline void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count)
{
    const char* call = "ReduceSum";
    host_detail::CheckVectorType<T>(call);
    host_detail::CheckOperand(call, "src", src, count);
    host_detail::CheckOperand(call, "dst", dst, 1);
    uint32_t tmpNeed = host_detail::FirstRoundElements<T>(count);
    host_detail::CheckOperand(call, "sharedTmpBuffer", sharedTmpBuffer, static_cast<int32_t>(tmpNeed));
    const T* in = src.Data(call);
    const int32_t perRepeat = ascendc_host::kRepeatBytes / sizeof(T);
    float total = 0.0f;
    for (int32_t start = 0; start < count; start += perRepeat) {
        float repeatSum = 0.0f;
        for (int32_t i = start; i < count && i < start + perRepeat; ++i) {
            repeatSum += static_cast<float>(in[i]);
        }
        total += repeatSum;
    }
    std::memset(sharedTmpBuffer.Data(call), 0xFF, tmpNeed * sizeof(T));
    dst.Data(call)[0] = static_cast<T>(total);
}

// Maximum of the first `count` elements into dst[0] (and its index into
// dst[1] when calIndex is set). The workspace check is the two-round formula
// of the AscendC ReduceMax example.
template <typename T>
inline void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count, bool calIndex = 0)
{
    const char* call = "ReduceMax";
    host_detail::CheckVectorType<T>(call);
    host_detail::CheckOperand(call, "src", src, count);
    host_detail::CheckOperand(call, "dst", dst, calIndex ? 2 : 1);
    if (count == 0) {
        return;
    }
    uint32_t perRepeat = ascendc_host::kRepeatBytes / sizeof(T);
    uint32_t perBlock = ascendc_host::kBlockBytes / sizeof(T);
    uint32_t repeats = (static_cast<uint32_t>(count) + perRepeat - 1) / perRepeat;
    uint32_t firstOut = repeats * 2;
    uint32_t secondStart = (firstOut + perBlock - 1) / perBlock * perBlock;
    uint32_t secondOut = (firstOut + perRepeat - 1) / perRepeat * 2;
    uint32_t tmpNeed = secondStart + (secondOut + perBlock - 1) / perBlock * perBlock;
    host_detail::CheckOperand(call, "sharedTmpBuffer", sharedTmpBuffer, static_cast<int32_t>(tmpNeed));
    const T* in = src.Data(call);
    int32_t best = 0;
    for (int32_t i = 1; i < count; ++i) {
        if (in[i] > in[best]) {
            best = i;
        }
    }
    std::memset(sharedTmpBuffer.Data(call), 0xFF, tmpNeed * sizeof(T));
    T* out = dst.Data(call);
    out[0] = in[best];
    if (calIndex) {
        uint32_t index = static_cast<uint32_t>(best);
        std::memcpy(&out[1], &index, sizeof(T) < sizeof(index) ? sizeof(T) : sizeof(index));
    }
}

// Compare writes one bit per element, and the count must cover whole
// 256-byte repeats.
template <typename T, typename U>
inline void Compare(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1,
                    CMPMODE cmpMode, uint32_t count)
{
    const char* call = "Compare";
    host_detail::CheckVectorType<T>(call);
    if ((count * sizeof(T)) % ascendc_host::kRepeatBytes != 0) {
        ascendc_host::Fail(call, std::to_string(count) + " x " + ascendc_host::TypeName<T>() + " = " +
                                     std::to_string(count * sizeof(T)) +
                                     " bytes is not a multiple of the 256-byte span Compare works on");
    }
    host_detail::CheckOperand(call, "src0", src0, static_cast<int32_t>(count));
    host_detail::CheckOperand(call, "src1", src1, static_cast<int32_t>(count));
    uint32_t maskBytes = count / 8;
    host_detail::CheckOperand(call, "dst", dst, static_cast<int32_t>((maskBytes + sizeof(U) - 1) / sizeof(U)));
    const T* a = src0.Data(call);
    const T* b = src1.Data(call);
    uint8_t* bits = reinterpret_cast<uint8_t*>(dst.Data(call));
    std::memset(bits, 0, maskBytes);
    for (uint32_t i = 0; i < count; ++i) {
        bool result = false;
        switch (cmpMode) {
            case CMPMODE::LT: result = a[i] < b[i]; break;
            case CMPMODE::GT: result = a[i] > b[i]; break;
            case CMPMODE::EQ: result = a[i] == b[i]; break;
            case CMPMODE::LE: result = a[i] <= b[i]; break;
            case CMPMODE::GE: result = a[i] >= b[i]; break;
            case CMPMODE::NE: result = a[i] != b[i]; break;
        }
        if (result) {
            bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        }
    }
}

// ---------------------------------------------------------------------- Cast

namespace host_detail {

inline double RoundWith(double value, RoundMode mode)
{
    switch (mode) {
        case RoundMode::CAST_NONE:
        case RoundMode::CAST_RINT: return std::nearbyint(value);  // default FE_TONEAREST: half to even
        case RoundMode::CAST_FLOOR: return std::floor(value);
        case RoundMode::CAST_CEIL: return std::ceil(value);
        case RoundMode::CAST_ROUND: return std::round(value);
        case RoundMode::CAST_TRUNC: return std::trunc(value);
        default: break;
    }
    ascendc_host::Fail("Cast", "round mode " + std::to_string(static_cast<int>(mode)) + " is not emulated");
}

inline const char* RoundName(RoundMode mode)
{
    switch (mode) {
        case RoundMode::CAST_NONE: return "CAST_NONE";
        case RoundMode::CAST_RINT: return "CAST_RINT";
        case RoundMode::CAST_FLOOR: return "CAST_FLOOR";
        case RoundMode::CAST_CEIL: return "CAST_CEIL";
        case RoundMode::CAST_ROUND: return "CAST_ROUND";
        case RoundMode::CAST_TRUNC: return "CAST_TRUNC";
        default: return "CAST_ODD";
    }
}

enum class Allowed { None, Exact, Rounding, NoneOrRounding };

// The Atlas A2 rows of the AscendC Cast table for the types used here.
// Exact: only CAST_NONE. Rounding: CAST_RINT/FLOOR/CEIL/ROUND/TRUNC.
template <typename Dst, typename Src>
constexpr Allowed A2CastRule()
{
    if constexpr (std::is_same_v<Src, int8_t> && std::is_same_v<Dst, half>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, uint8_t> && std::is_same_v<Dst, half>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, int16_t> && std::is_same_v<Dst, half>) return Allowed::NoneOrRounding;
    else if constexpr (std::is_same_v<Src, int16_t> && std::is_same_v<Dst, float>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, half> && (std::is_same_v<Dst, int8_t> || std::is_same_v<Dst, uint8_t>))
        return Allowed::NoneOrRounding;
    else if constexpr (std::is_same_v<Src, half> && (std::is_same_v<Dst, int16_t> || std::is_same_v<Dst, int32_t>))
        return Allowed::Rounding;
    else if constexpr (std::is_same_v<Src, half> && std::is_same_v<Dst, float>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, bfloat16_t> && std::is_same_v<Dst, int32_t>) return Allowed::Rounding;
    else if constexpr (std::is_same_v<Src, bfloat16_t> && std::is_same_v<Dst, float>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, int32_t> && std::is_same_v<Dst, int16_t>) return Allowed::Exact;
    else if constexpr (std::is_same_v<Src, int32_t> && std::is_same_v<Dst, float>) return Allowed::NoneOrRounding;
    else if constexpr (std::is_same_v<Src, float> && std::is_same_v<Dst, half>) return Allowed::NoneOrRounding;
    else if constexpr (std::is_same_v<Src, float> &&
                       (std::is_same_v<Dst, int16_t> || std::is_same_v<Dst, bfloat16_t> ||
                        std::is_same_v<Dst, int32_t> || std::is_same_v<Dst, float> || std::is_same_v<Dst, int64_t>))
        return Allowed::Rounding;
    else return Allowed::None;
}

template <typename Dst>
inline Dst ConvertRounded(double value, RoundMode mode)
{
    if constexpr (std::is_same_v<Dst, half>) {
        if (mode != RoundMode::CAST_NONE && mode != RoundMode::CAST_RINT) {
            ascendc_host::Fail("Cast", std::string("round mode ") + RoundName(mode) + " to half is not emulated");
        }
        return static_cast<half>(static_cast<float>(value));
    } else if constexpr (std::is_same_v<Dst, bfloat16_t>) {
        if (mode != RoundMode::CAST_RINT) {
            ascendc_host::Fail("Cast", std::string("round mode ") + RoundName(mode) + " to bfloat16_t is not emulated");
        }
        return bfloat16_t(static_cast<float>(value));
    } else if constexpr (std::is_same_v<Dst, float>) {
        return static_cast<float>(RoundWith(value, mode));
    } else {
        double rounded = RoundWith(value, mode);
        double low = static_cast<double>(std::numeric_limits<Dst>::min());
        double high = static_cast<double>(std::numeric_limits<Dst>::max());
        rounded = rounded < low ? low : (rounded > high ? high : rounded);
        return static_cast<Dst>(rounded);
    }
}

}  // namespace host_detail

template <typename T, typename U>
inline void Cast(const LocalTensor<T>& dst, const LocalTensor<U>& src, const RoundMode& roundMode,
                 const uint32_t count)
{
    const char* call = "Cast";
    constexpr host_detail::Allowed rule = host_detail::A2CastRule<T, U>();
    std::string pair = std::string(ascendc_host::TypeName<U>()) + " -> " + ascendc_host::TypeName<T>();
    if constexpr (rule == host_detail::Allowed::None) {
        ascendc_host::Fail(call, pair + " is not in the Atlas A2 Cast table; go through half");
    }
    bool isNone = roundMode == RoundMode::CAST_NONE;
    if ((rule == host_detail::Allowed::Exact && !isNone) || (rule == host_detail::Allowed::Rounding && isNone) ||
        roundMode == RoundMode::CAST_ODD) {
        ascendc_host::Fail(call, pair + " does not accept " + host_detail::RoundName(roundMode) + " on Atlas A2");
    }
    host_detail::CheckOperand(call, "dst", dst, static_cast<int32_t>(count));
    host_detail::CheckOperand(call, "src", src, static_cast<int32_t>(count));
    T* out = dst.Data(call);
    const U* in = src.Data(call);
    // Convert through a buffer so dst may alias src even when widths differ.
    std::vector<T> converted(count);
    for (uint32_t i = 0; i < count; ++i) {
        double value = ascendc_host::ToDouble(in[i]);
        if constexpr (std::is_same_v<T, float> && !std::is_same_v<U, float>) {
            // Widening to float32 (exact from half, bfloat16_t and int16_t;
            // round to nearest even from int32_t above 2^24).
            converted[i] = static_cast<float>(value);
        } else {
            converted[i] = host_detail::ConvertRounded<T>(value, roundMode);
        }
    }
    std::memcpy(out, converted.data(), count * sizeof(T));
}

}  // namespace AscendC

namespace ascendc_host {

// Run `kernel` once per block index of a launch grid of `blockNum` cores, then
// check that every queue was balanced when it was destroyed. Cores run one after another, which
// is a valid schedule because the kernels share no Unified Buffer state and
// write disjoint global memory.
template <typename Kernel>
inline void LaunchGrid(const char* name, uint32_t blockNum, Kernel kernel)
{
    CoreContext& ctx = Context();
    ctx.kernel = name;
    ctx.blockNum = blockNum;
    for (uint32_t block = 0; block < blockNum; ++block) {
        ctx.blockIdx = block;
        ctx.leaks.clear();
        kernel();
        if (!ctx.leaks.empty()) {
            std::string first = ctx.leaks.front();
            ctx.leaks.clear();
            Fail("end of kernel", first);
        }
    }
}

}  // namespace ascendc_host
