"""A strided convolution whose input gradient is computed channels-last (README "Speed and many GPUs").

On the CPU, oneDNN's input gradient of a strided float32 convolution is faster on channels-last
tensors than on NCHW ones (forward and weight gradient are as fast either way; benchmarks/RESULTS.md).
:func:`conv2d` computes that gradient channels-last and hands it back as NCHW through the operator
``spikeloc::nhwc_to_nchw`` (torch's own copy in that direction took most of the gain back). Values equal
``F.conv2d``'s, the input gradient to float rounding (oneDNN sums in another order). The ``cpu_kernels``
backend's cells use it (:class:`~spikeloc.neurons.layers.SpikingConv2d`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LAST = torch.channels_last


class _StridedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.settings = (stride, padding, dilation, False, [0, 0], groups)
        return F.conv2d(x, weight, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        need_x, need_weight = ctx.needs_input_grad[:2]
        grad_x = grad_weight = None
        if need_weight:
            grad_weight = torch.ops.aten.convolution_backward(grad, x, weight, None, *ctx.settings,
                                                              [False, True, False])[1]
        if need_x:  # x's values are not read: only its shape and layout
            shape_only = torch.empty(x.shape, dtype=x.dtype, memory_format=_LAST)
            grad_x = torch.ops.spikeloc.nhwc_to_nchw(torch.ops.aten.convolution_backward(
                grad.contiguous(memory_format=_LAST), shape_only, weight.contiguous(memory_format=_LAST), None,
                *ctx.settings, [True, False, False])[0])
        return grad_x, grad_weight, None, None, None, None


def applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` of ``x`` is a strided, bias-free convolution of a float32 NCHW CPU tensor that needs an
    input gradient (where the channels-last gradient pays)."""
    return (conv.stride != (1, 1) and conv.bias is None and x.requires_grad and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str) and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous())


def conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``, with the input gradient computed channels-last where :func:`applies` (the kernels loaded)."""
    if not applies(conv, x):
        return conv(x)
    return _StridedConv.apply(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)
