// Stand-in for torch_npu's NPUStream.h (compile check only).
#pragma once

namespace c10_npu {

struct NPUStream {
    void* stream(bool needEmptyQueue) const;
};

NPUStream getCurrentNPUStream();

}  // namespace c10_npu
