"""2x2 max pooling with stride 2 as a hand-written CPU kernel (``maxpool.c``; README "Speed and many GPUs").

:func:`max_pool2x2` equals ``torch.nn.functional.max_pool2d(x, 2)`` bit for bit, forward and backward
(ties go to the first largest value of a window, NaN wins, an odd last row or column is left out), and
runs about 5x faster on contiguous float32 CPU tensors: torch's kernel for NCHW does not vectorise and
keeps an int64 index per output, this one keeps a byte. Anything else, and code being traced by
``torch.compile`` (whose own kernel is fused), runs torch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import available, library, scope


class _MaxPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        out = x.new_empty(n, c, height // 2, width // 2)
        where = torch.empty(out.shape, dtype=torch.uint8)
        with scope("spikeloc::maxpool2_forward"):
            library().maxpool2_forward(x.data_ptr(), n * c, height, width, out.data_ptr(), where.data_ptr(),
                                       torch.get_num_threads())
        ctx.save_for_backward(where)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (where,) = ctx.saved_tensors
        n, c, height, width = ctx.input_shape
        grad = grad.contiguous()
        grad_in = grad.new_empty(ctx.input_shape)
        with scope("spikeloc::maxpool2_backward"):
            library().maxpool2_backward(grad.data_ptr(), where.data_ptr(), n * c, height, width, grad_in.data_ptr(),
                                        torch.get_num_threads())
        return grad_in


def applies(x: Tensor) -> bool:
    """Whether the kernel runs for ``x`` (else torch's ``max_pool2d``)."""
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous() and min(x.shape[-2:]) >= 2 and available())


def max_pool2x2(x: Tensor) -> Tensor:
    """``max_pool2d(x, 2)`` of ``[B, C, H, W]``, through the kernel where it :func:`applies`."""
    return _MaxPool2.apply(x) if applies(x) else F.max_pool2d(x, 2)
