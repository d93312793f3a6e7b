"""A strided convolution whose input gradient is computed channels-last (README "Speed and many GPUs").

On the CPU, oneDNN's input gradient of a strided float32 convolution is 2x slower on NCHW tensors than
on channels-last ones (a 3x3, stride 2 convolution of ``[2, 32, 208, 208]``: 24 ms against 11 on a
2-core Xeon VM; forward and weight gradient are as fast either way). :func:`conv2d` computes that
gradient channels-last and hands it back as NCHW, turned by ``layout.c`` (torch's own copy in that
direction took most of the gain back). Values equal ``F.conv2d``'s, the input gradient to float
rounding (oneDNN sums in another order). Anything else, and code ``torch.compile`` traces, runs
``conv(x)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import available, library, scope

_LAST = torch.channels_last


def _to_nchw(x: Tensor) -> Tensor:
    """A channels-last ``x`` as a contiguous NCHW tensor."""
    n, c, height, width = x.shape
    out = x.new_empty(x.shape)
    library().nhwc_to_nchw(x.data_ptr(), out.data_ptr(), n, c, height * width, torch.get_num_threads())
    return out


class _StridedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, conv: nn.Conv2d) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = conv
        return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        conv, (need_x, need_weight, _) = ctx.conv, ctx.needs_input_grad
        settings = (conv.stride, conv.padding, conv.dilation, False, [0, 0], conv.groups)
        grad_x = grad_weight = None
        with scope("spikeloc::strided_conv_backward"):  # layout changes included: a convolution to the profiler
            if need_weight:
                grad_weight = torch.ops.aten.convolution_backward(grad, x, weight, None, *settings,
                                                                  [False, True, False])[1]
            if need_x:  # x's values are not read: only its shape and layout
                shape_only = torch.empty(x.shape, dtype=x.dtype, memory_format=_LAST)
                grad_x = _to_nchw(torch.ops.aten.convolution_backward(
                    grad.contiguous(memory_format=_LAST), shape_only, weight.contiguous(memory_format=_LAST), None,
                    *settings, [True, False, False])[0])
        return grad_x, grad_weight, None


def applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether ``conv`` of ``x`` is a strided, bias-free convolution of a float32 NCHW CPU tensor that needs
    an input gradient, without forward hooks (firing statistics count through them), with the kernels
    built and not while ``torch.compile`` traces."""
    return (not torch.compiler.is_compiling() and conv.stride != (1, 1) and conv.bias is None and x.requires_grad
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str) and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.dim() == 4 and x.is_contiguous()
            and not (conv._forward_hooks or conv._forward_pre_hooks) and available())


def conv2d(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x)``, with the input gradient computed channels-last where :func:`applies`."""
    return _StridedConv.apply(x, conv.weight, conv) if applies(conv, x) else conv(x)
