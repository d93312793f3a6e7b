"""2x2 max pooling with stride 2 as a hand-written CPU kernel (``maxpool.c``; README "Speed and many GPUs").

:func:`max_pool2x2_cat` equals ``torch.cat([F.max_pool2d(x, 2) for x in xs], 1)`` bit for bit, forward and
backward (ties go to the first largest value of a window, NaN wins, an odd last row or column is left
out), and runs about 5x faster on contiguous float32 CPU tensors: torch's kernel for NCHW does not
vectorise and keeps an int64 index per output, this one keeps a byte, and each input is pooled straight
into its channels of the joined output (no concatenation, and no copy of the gradient's slices).
Anything else, and code being traced by ``torch.compile`` (whose own kernel is fused), runs torch's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import available, library, scope


class _PoolJoin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *xs: Tensor) -> Tensor:
        n, _, height, width = xs[0].shape
        total = sum(x.shape[1] for x in xs)
        out = xs[0].new_empty(n, total, height // 2, width // 2)
        wheres, offset = [], 0
        with scope("spikeloc::maxpool2_forward"):
            for x in xs:
                channels = x.shape[1]
                where = torch.empty(n, channels, height // 2, width // 2, dtype=torch.uint8)
                library().maxpool2_forward(x.data_ptr(), n * channels, height, width, channels, total, offset,
                                           out.data_ptr(), where.data_ptr(), torch.get_num_threads())
                wheres.append(where)
                offset += channels
        ctx.save_for_backward(*wheres)
        ctx.size = (height, width)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        (height, width), total = ctx.size, grad.shape[1]
        grad = grad.contiguous()
        grads, offset = [], 0
        with scope("spikeloc::maxpool2_backward"):
            for where, needed in zip(ctx.saved_tensors, ctx.needs_input_grad):
                n, channels = where.shape[:2]
                grad_in = None
                if needed:
                    grad_in = grad.new_empty(n, channels, height, width)
                    library().maxpool2_backward(grad.data_ptr(), where.data_ptr(), n * channels, height, width,
                                                channels, total, offset, grad_in.data_ptr(), torch.get_num_threads())
                grads.append(grad_in)
                offset += channels
        return tuple(grads)


def applies(x: Tensor) -> bool:
    """Whether the kernel runs for ``x`` (else torch's ``max_pool2d``)."""
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous() and min(x.shape[-2:]) >= 2 and available())


def max_pool2x2_cat(xs: list[Tensor]) -> Tensor:
    """``max_pool2d(x, 2)`` of each ``[B, C_i, H, W]`` of ``xs``, joined along channels: ``[B, sum C_i, H/2,
    W/2]``, through the kernel where it :func:`applies` to every input (all of one batch size and size)."""
    if all(applies(x) and x.shape[0] == xs[0].shape[0] and x.shape[2:] == xs[0].shape[2:] for x in xs):
        return _PoolJoin.apply(*xs)
    return torch.cat([F.max_pool2d(x, 2) for x in xs], dim=1)
