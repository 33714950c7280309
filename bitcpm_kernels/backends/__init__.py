"""Kernel backends. Each module provides the same four functions:

    quantize(w, group_size, eps) -> (codes, scales)
    dequantize(codes, scales, group_size, dtype) -> w_hat
    linear_forward(x, w, bias, group_size, eps, act_bits) -> y
    linear_backward(grad_y, x, w, group_size, eps, act_bits, output_mask) -> (grad_x, grad_w, grad_bias)

Arguments arrive already checked by ``bitcpm_kernels.ops``.
"""
