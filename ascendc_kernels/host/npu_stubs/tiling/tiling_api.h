// Stand-in for CANN's tiling/tiling_api.h (compile check only).
#pragma once
#include <cstddef>
#include <cstdint>

#include "tiling/platform/platform_ascendc.h"

namespace optiling {

struct TCubeTiling {
    size_t GetDataSize() const;
    void SaveToBuffer(void* buffer, size_t size);
    int32_t get_usedCoreNum() const;
};

}  // namespace optiling

namespace matmul_tiling {

enum class TPosition { GM };
enum class CubeFormat { ND };
enum class DataType { DT_FLOAT16, DT_BF16, DT_INT8, DT_INT32, DT_FLOAT };

class MultiCoreMatmulTiling {
public:
    explicit MultiCoreMatmulTiling(const platform_ascendc::PlatformAscendC& platform);
    int32_t SetDim(int32_t dim);
    int32_t SetAType(TPosition pos, CubeFormat format, DataType type, bool isTrans);
    int32_t SetBType(TPosition pos, CubeFormat format, DataType type, bool isTrans);
    int32_t SetCType(TPosition pos, CubeFormat format, DataType type);
    int32_t SetOrgShape(int32_t m, int32_t n, int32_t k);
    int32_t SetShape(int32_t m, int32_t n, int32_t k);
    void EnableBias(bool enable);
    int32_t SetBufferSpace(int32_t l1, int32_t l0c, int32_t ub);
    int64_t GetTiling(optiling::TCubeTiling& tiling);
};

}  // namespace matmul_tiling
