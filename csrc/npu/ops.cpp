// torch.ops.bitcpm_npu.*: the ternary ops on Ascend NPUs, registered for the
// PrivateUse1 dispatch key (the "npu" device of torch_npu).
//
// The schemas are those of torch.ops.bitcpm.* (bitcpm_kernels/ops.py), which
// owns autograd for every device and calls these ops from
// bitcpm_kernels/backends/npu.py, which imports this library as the Python
// extension bitcpm_kernels._npu_C. Each op chains the AscendC kernels on the
// current NPU stream. Tilings are built on the host (ascendc_kernels/
// host_tiling.h, and CANN's matmul tiling API for the cube) and copied to
// device memory with the launch. The same chains run on the host in
// ascendc_kernels/host/ascendc_host_runner.py, which is what the tests check.
//
// NOTE: this file has never been compiled or run: the development machine has
// neither the CANN toolkit nor torch_npu. Input validation (shapes, group
// size, non-finite weights) happens in bitcpm_kernels/backends/npu.py.
#ifdef TORCH_EXTENSION_NAME
#include <Python.h>
#endif
#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <array>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "host_tiling.h"
#include "kernel_launch.h"
#include "tiling/platform/platform_ascendc.h"
#include "tiling/tiling_api.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"

namespace bitcpm_npu {
namespace {

uint32_t DtypeCode(at::ScalarType type)
{
    switch (type) {
        case at::kFloat: return kBitcpmFloat32;
        case at::kHalf: return kBitcpmFloat16;
        case at::kBFloat16: return kBitcpmBFloat16;
        case at::kChar: return kBitcpmInt8;
        case at::kInt: return kBitcpmInt32;
        default: break;
    }
    TORCH_CHECK(false, "bitcpm_npu: unsupported dtype ", type, "; expected float32, float16 or bfloat16");
}

struct CoreCounts {
    uint32_t vector;
    uint32_t cube;
};

CoreCounts DeviceCores()
{
    auto* platform = platform_ascendc::PlatformAscendCManager::GetInstance();
    TORCH_CHECK(platform != nullptr, "bitcpm_npu: CANN platform information is not available");
    return CoreCounts{platform->GetCoreNumAiv(), platform->GetCoreNumAic()};
}

void* Stream() { return c10_npu::getCurrentNPUStream().stream(false); }

void* Ptr(const at::Tensor& tensor) { return tensor.defined() ? tensor.data_ptr() : nullptr; }

// Copy `size` bytes of host tiling into a device tensor. The caching
// allocator keeps the memory for this stream until the kernel has run.
at::Tensor TilingOnDevice(const void* tiling, size_t size, const at::Device& device)
{
    at::Tensor host = at::empty({static_cast<int64_t>(size)}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(host.data_ptr(), tiling, size);
    return host.to(device);
}

template <typename Tiling>
at::Tensor TilingOnDevice(const Tiling& tiling, const at::Device& device)
{
    return TilingOnDevice(&tiling, sizeof(Tiling), device);
}

std::vector<int64_t> ScaleShape(int64_t n, int64_t k, int64_t groupSize)
{
    if (groupSize == -1) return {n, 1};
    if (groupSize == 0) return {1, 1};
    return {n, k / groupSize};
}

// ------------------------------------------------------------ kernel steps

// scales[g] = s and codes, or with mode kQuantizeAbsSum only the sums.
void RunQuantize(const at::Tensor& w, int64_t numGroups, int64_t groupLen, uint32_t mode, double eps,
                 const at::Tensor& codes, const at::Tensor& scales)
{
    TernaryQuantizeTiling tiling = bitcpm_tiling::TernaryQuantizeTilingFor(
        DtypeCode(w.scalar_type()), static_cast<uint64_t>(numGroups), static_cast<uint32_t>(groupLen), mode,
        static_cast<float>(eps), DeviceCores().vector);
    if (tiling.split.usedCores == 0) {
        return;
    }
    at::Tensor tilingGm = TilingOnDevice(tiling, w.device());
    LaunchTernaryQuantize(tiling.split.usedCores, Stream(), Ptr(w), Ptr(codes), Ptr(scales), Ptr(tilingGm));
}

void RunDequantize(const at::Tensor& codes, const at::Tensor& scales, int64_t numGroups, int64_t groupLen,
                   uint32_t scaleMode, const at::Tensor& out)
{
    TernaryDequantizeTiling tiling = bitcpm_tiling::TernaryDequantizeTilingFor(
        DtypeCode(out.scalar_type()), static_cast<uint64_t>(numGroups), static_cast<uint32_t>(groupLen), scaleMode,
        DeviceCores().vector);
    if (tiling.split.usedCores == 0) {
        return;
    }
    at::Tensor tilingGm = TilingOnDevice(tiling, codes.device());
    LaunchTernaryDequantize(tiling.split.usedCores, Stream(), Ptr(codes), Ptr(scales), Ptr(out), Ptr(tilingGm));
}

void RunActQuantize(const at::Tensor& x2, double eps, const at::Tensor& codes, const at::Tensor& rowScale)
{
    ActQuantizeTiling tiling = bitcpm_tiling::ActQuantizeTilingFor(
        DtypeCode(x2.scalar_type()), static_cast<uint64_t>(x2.size(0)), static_cast<uint32_t>(x2.size(1)),
        static_cast<float>(eps), DeviceCores().vector);
    if (tiling.split.usedCores == 0) {
        return;
    }
    at::Tensor tilingGm = TilingOnDevice(tiling, x2.device());
    LaunchActQuantize(tiling.split.usedCores, Stream(), Ptr(x2), Ptr(codes), Ptr(rowScale), Ptr(tilingGm));
}

// out = acc [* colScale] [/ rowDivisor] [+ bias], any of the three undefined to skip it.
void RunEpilogue(const at::Tensor& acc, const at::Tensor& colScale, const at::Tensor& rowDivisor,
                 const at::Tensor& bias, const at::Tensor& out)
{
    uint32_t flags = (colScale.defined() ? kEpilogueColScale : 0) | (rowDivisor.defined() ? kEpilogueRowDiv : 0) |
                     (bias.defined() ? kEpilogueBias : 0);
    LinearEpilogueTiling tiling = bitcpm_tiling::LinearEpilogueTilingFor(
        DtypeCode(acc.scalar_type()), DtypeCode(out.scalar_type()), flags, static_cast<uint64_t>(acc.size(0)),
        static_cast<uint32_t>(acc.size(1)), DeviceCores().vector);
    if (tiling.split.usedCores == 0) {
        return;
    }
    at::Tensor tilingGm = TilingOnDevice(tiling, acc.device());
    LaunchLinearEpilogue(tiling.split.usedCores, Stream(), Ptr(acc), Ptr(colScale), Ptr(rowDivisor), Ptr(bias),
                         Ptr(out), Ptr(tilingGm));
}

matmul_tiling::DataType CubeType(at::ScalarType type)
{
    switch (type) {
        case at::kHalf: return matmul_tiling::DataType::DT_FLOAT16;
        case at::kBFloat16: return matmul_tiling::DataType::DT_BF16;
        case at::kChar: return matmul_tiling::DataType::DT_INT8;
        case at::kInt: return matmul_tiling::DataType::DT_INT32;
        default: return matmul_tiling::DataType::DT_FLOAT;
    }
}

// c (M x N, float32 or int32) = a (M x K) @ op(b), on the cube cores.
void RunMatmul(const at::Tensor& a, const at::Tensor& b, bool transposeB, const at::Tensor& c)
{
    int32_t m = static_cast<int32_t>(a.size(0));
    int32_t k = static_cast<int32_t>(a.size(1));
    int32_t n = static_cast<int32_t>(transposeB ? b.size(0) : b.size(1));
    if (m == 0 || n == 0) {
        return;
    }
    if (k == 0) {
        c.zero_();
        return;
    }

    auto* platform = platform_ascendc::PlatformAscendCManager::GetInstance();
    matmul_tiling::MultiCoreMatmulTiling api(*platform);
    api.SetDim(static_cast<int32_t>(platform->GetCoreNumAic()));
    api.SetAType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, CubeType(a.scalar_type()), false);
    api.SetBType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, CubeType(b.scalar_type()), transposeB);
    api.SetCType(matmul_tiling::TPosition::GM, matmul_tiling::CubeFormat::ND, CubeType(c.scalar_type()));
    api.SetOrgShape(m, n, k);
    api.SetShape(m, n, k);
    api.EnableBias(false);
    api.SetBufferSpace(-1, -1, -1);
    optiling::TCubeTiling cube;
    TORCH_CHECK(api.GetTiling(cube) != -1, "bitcpm_npu: CANN matmul tiling failed for M=", m, ", N=", n, ", K=", k);

    TernaryMatmulHeader header{};
    header.dtype = DtypeCode(a.scalar_type());
    header.transposeB = transposeB ? 1 : 0;
    std::vector<uint8_t> buffer(sizeof(header) + cube.GetDataSize());
    std::memcpy(buffer.data(), &header, sizeof(header));
    cube.SaveToBuffer(buffer.data() + sizeof(header), cube.GetDataSize());
    at::Tensor tilingGm = TilingOnDevice(buffer.data(), buffer.size(), a.device());

    at::Tensor workspace = at::empty({static_cast<int64_t>(platform->GetLibApiWorkSpaceSize())},
                                     a.options().dtype(at::kByte));
    LaunchTernaryMatmul(static_cast<uint32_t>(cube.get_usedCoreNum()), Stream(), Ptr(a), Ptr(b), Ptr(c),
                        Ptr(workspace), Ptr(tilingGm));
}

// Per-output-channel scale (N,) for group_size -1 or 0.
at::Tensor ColumnScales(const at::Tensor& scales, int64_t n, int64_t groupSize)
{
    return groupSize == 0 ? scales.reshape({1}).expand({n}).contiguous() : scales.reshape({n});
}

// Q as numbers of `dtype` (exact): the cube operand for row/tensor scales.
at::Tensor CodesAs(const at::Tensor& codes, at::ScalarType dtype)
{
    at::Tensor q = at::empty(codes.sizes(), codes.options().dtype(dtype));
    RunDequantize(codes, at::Tensor(), codes.size(0), codes.size(1), kDequantizeCodesOnly, q);
    return q;
}

}  // namespace

// ------------------------------------------------------------------- ops

std::tuple<at::Tensor, at::Tensor> TernaryQuantize(const at::Tensor& w, int64_t groupSize, double eps)
{
    c10::OptionalDeviceGuard guard(w.device());
    at::Tensor wc = w.contiguous();
    int64_t n = wc.size(0);
    int64_t k = wc.size(1);
    at::Tensor codes = at::empty({n, k}, wc.options().dtype(at::kChar));

    if (groupSize == 0) {
        // Per-tensor scale: row sums of |W| on the vector cores, their total
        // as a device reduction, then the codes with that one scale.
        at::Tensor rowSums = at::empty({n}, wc.options().dtype(at::kFloat));
        RunQuantize(wc, n, k, kQuantizeAbsSum, eps, at::Tensor(), rowSums);
        at::Tensor mean = rowSums.sum() / static_cast<double>(n * k);
        at::Tensor scales = at::clamp_min(mean, eps).reshape({1, 1}).to(at::kFloat).contiguous();
        RunQuantize(wc, n, k, kQuantizeGivenScale, eps, codes, scales);
        return {codes, scales};
    }

    int64_t groupLen = groupSize == -1 ? k : groupSize;
    int64_t numGroups = groupLen == 0 ? 0 : n * k / groupLen;
    at::Tensor scales = at::empty(ScaleShape(n, k, groupSize), wc.options().dtype(at::kFloat));
    RunQuantize(wc, numGroups, groupLen, kQuantizeFromGroup, eps, codes, scales);
    return {codes, scales};
}

at::Tensor TernaryDequantize(const at::Tensor& codes, const at::Tensor& scales, int64_t groupSize,
                             at::ScalarType dtype)
{
    c10::OptionalDeviceGuard guard(codes.device());
    at::Tensor cc = codes.contiguous();
    at::Tensor sc = scales.to(at::kFloat).contiguous();
    int64_t n = cc.size(0);
    int64_t k = cc.size(1);
    at::Tensor out = at::empty({n, k}, cc.options().dtype(dtype));
    if (groupSize == 0) {
        RunDequantize(cc, sc, n, k, kDequantizeSharedScale, out);
    } else {
        int64_t groupLen = groupSize == -1 ? k : groupSize;
        RunDequantize(cc, sc, groupLen == 0 ? 0 : n * k / groupLen, groupLen, kDequantizePerGroup, out);
    }
    return out;
}

at::Tensor TernaryLinear(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                         int64_t groupSize, double eps, std::optional<int64_t> actBits)
{
    c10::OptionalDeviceGuard guard(x.device());
    int64_t n = w.size(0);
    int64_t k = w.size(1);
    at::Tensor x2 = x.reshape({-1, k}).contiguous();
    int64_t m = x2.size(0);
    std::vector<int64_t> outShape(x.sizes().begin(), x.sizes().end() - 1);
    outShape.push_back(n);
    if (m == 0 || n == 0 || k == 0) {
        // Nothing to launch: an empty product is zero, plus the bias.
        at::Tensor y = at::zeros(outShape, x.options());
        return bias.has_value() ? y + bias->to(x.scalar_type()) : y;
    }

    auto [codes, scales] = TernaryQuantize(w, groupSize, eps);
    at::Tensor biasF = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
    at::Tensor y = at::empty({m, n}, x2.options());

    if (actBits.has_value()) {
        at::Tensor xCodes = at::empty({m, k}, x2.options().dtype(at::kChar));
        at::Tensor xScale = at::empty({m}, x2.options().dtype(at::kFloat));
        RunActQuantize(x2, eps, xCodes, xScale);
        if (groupSize > 0) {
            // A group scale changes along K, so the int32 product cannot be
            // rescaled per output channel: multiply x_hat by W_hat instead.
            at::Tensor xHat = (xCodes.to(at::kFloat) / xScale.unsqueeze(1)).to(x.scalar_type()).contiguous();
            at::Tensor wHat = TernaryDequantize(codes, scales, groupSize, x.scalar_type());
            at::Tensor acc = at::empty({m, n}, x2.options().dtype(at::kFloat));
            RunMatmul(xHat, wHat, true, acc);
            RunEpilogue(acc, at::Tensor(), at::Tensor(), biasF, y);
            return y.reshape(outShape);
        }
        at::Tensor acc = at::empty({m, n}, x2.options().dtype(at::kInt));
        RunMatmul(xCodes, codes, true, acc);
        RunEpilogue(acc, ColumnScales(scales, n, groupSize), xScale, biasF, y);
        return y.reshape(outShape);
    }

    at::Tensor acc = at::empty({m, n}, x2.options().dtype(at::kFloat));
    if (groupSize > 0) {
        at::Tensor wHat = TernaryDequantize(codes, scales, groupSize, x.scalar_type());
        RunMatmul(x2, wHat, true, acc);
        RunEpilogue(acc, at::Tensor(), at::Tensor(), biasF, y);
    } else {
        RunMatmul(x2, CodesAs(codes, x.scalar_type()), true, acc);
        RunEpilogue(acc, ColumnScales(scales, n, groupSize), at::Tensor(), biasF, y);
    }
    return y.reshape(outShape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> TernaryLinearBackward(const at::Tensor& gradY, const at::Tensor& x,
                                                                     const at::Tensor& w, int64_t groupSize,
                                                                     double eps, std::optional<int64_t> actBits,
                                                                     std::array<bool, 3> outputMask)
{
    c10::OptionalDeviceGuard guard(gradY.device());
    int64_t n = w.size(0);
    int64_t k = w.size(1);
    at::Tensor g2 = gradY.reshape({-1, n}).contiguous();
    int64_t m = g2.size(0);
    at::Tensor gradX = at::empty({0}, x.options());
    at::Tensor gradW = at::empty({0}, w.options());
    at::Tensor gradBias = at::empty({0}, gradY.options());

    if (outputMask[0] && (m == 0 || n == 0 || k == 0)) {
        gradX = at::zeros(x.sizes(), x.options());
    } else if (outputMask[0]) {
        auto [codes, scales] = TernaryQuantize(w, groupSize, eps);
        at::Tensor acc = at::empty({m, k}, g2.options().dtype(at::kFloat));
        if (groupSize > 0) {
            RunMatmul(g2, TernaryDequantize(codes, scales, groupSize, gradY.scalar_type()), false, acc);
        } else {
            // grad_x = (grad_y * s) @ Q, s per output channel.
            at::Tensor scaled = at::empty({m, n}, g2.options());
            RunEpilogue(g2, ColumnScales(scales, n, groupSize), at::Tensor(), at::Tensor(), scaled);
            RunMatmul(scaled, CodesAs(codes, gradY.scalar_type()), false, acc);
        }
        gradX = acc.to(x.scalar_type()).reshape(x.sizes());
    }
    if (outputMask[1]) {
        // grad_W = grad_y^T @ x_hat through the ordinary matmul.
        at::Tensor x2 = x.reshape({-1, k}).contiguous();
        at::Tensor xHat = x2;
        if (actBits.has_value()) {
            at::Tensor xCodes = at::empty({m, k}, x2.options().dtype(at::kChar));
            at::Tensor xScale = at::empty({m}, x2.options().dtype(at::kFloat));
            RunActQuantize(x2, eps, xCodes, xScale);
            xHat = (xCodes.to(at::kFloat) / xScale.unsqueeze(1)).to(x.scalar_type());
        }
        gradW = at::matmul(g2.t(), xHat).to(w.scalar_type());
    }
    if (outputMask[2]) {
        gradBias = g2.sum(0);
    }
    return {gradX, gradW, gradBias};
}

}  // namespace bitcpm_npu

TORCH_LIBRARY(bitcpm_npu, m)
{
    m.def("ternary_quantize(Tensor w, int group_size, float eps) -> (Tensor codes, Tensor scales)");
    m.def("ternary_dequantize(Tensor codes, Tensor scales, int group_size, ScalarType dtype) -> Tensor");
    m.def("ternary_linear(Tensor x, Tensor w, Tensor? bias, int group_size, float eps, int? act_bits) -> Tensor");
    m.def(
        "ternary_linear_backward(Tensor grad_y, Tensor x, Tensor w, int group_size, float eps, int? act_bits, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(bitcpm_npu, PrivateUse1, m)
{
    m.impl("ternary_quantize", &bitcpm_npu::TernaryQuantize);
    m.impl("ternary_dequantize", &bitcpm_npu::TernaryDequantize);
    m.impl("ternary_linear", &bitcpm_npu::TernaryLinear);
    m.impl("ternary_linear_backward", &bitcpm_npu::TernaryLinearBackward);
}

#ifdef TORCH_EXTENSION_NAME
// An empty Python module, so that `import bitcpm_kernels._npu_C` loads this
// library and runs the registrations above. The standalone CMake build
// (libbitcpm_npu.so, loaded with torch.ops.load_library) has no module.
extern "C" PyObject* PyInit__npu_C(void)
{
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_npu_C", nullptr, -1, nullptr};
    return PyModule_Create(&module);
}
#endif
