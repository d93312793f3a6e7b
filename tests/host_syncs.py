"""Host syncs on any device, the CPU included: ops that read a tensor's values back to the host
(``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, ``one_hot``'s range check) or whose output
shape depends on the values (``nonzero``, boolean-mask indexing, ``unique``). On a GPU each of them
stalls the host until the device catches up; on a CPU nothing stalls, so ``torch.cuda``'s sync
debug mode sees nothing, but the same ops run and are caught here by dispatch."""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
SYNC_OPS = frozenset({"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
                      "aten.unique.default", "aten._unique2.default", "aten.unique_dim.default",
                      "aten.unique_consecutive.default", "aten.repeat_interleave.Tensor", "aten.equal.default",
                      "aten.is_nonzero.default"})


@dataclass(frozen=True)
class Sync:
    op: str
    site: str  # the innermost repository line on the stack, ``path:line function``
    in_optimizer: bool  # called by a torch optimizer (its step counters are host values on any device)


class HostSyncs(TorchDispatchMode):
    """``with HostSyncs() as found:`` records every syncing op called under repository code."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[Sync] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS:
            stack = traceback.extract_stack()[:-1]
            ours = [f for f in stack if f.filename.startswith(str(REPO)) and "/.venv/" not in f.filename]
            if ours:
                frame = ours[-1]
                site = f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno} {frame.name}"
                self.found.append(Sync(str(func), site, any("/torch/optim/" in f.filename for f in stack)))
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> list[Sync]:
        super().__enter__()
        return self.found
