// Stand-in for CANN's tiling/platform/platform_ascendc.h (compile check only).
#pragma once
#include <cstdint>

namespace platform_ascendc {

class PlatformAscendC {
public:
    uint32_t GetCoreNumAiv() const;
    uint32_t GetCoreNumAic() const;
    uint64_t GetLibApiWorkSpaceSize() const;
};

class PlatformAscendCManager {
public:
    static PlatformAscendC* GetInstance();
};

}  // namespace platform_ascendc
