"""Memory reused from one batch, block, chunk and checkpoint to the next: per-role tile buffers (:class:`_Workspace`)
and bump-allocated arenas (:class:`_Arena`). On CPU, touching memory fresh from the OS costs more than the arithmetic
done on it, so the per-example gradients and their tiles are written into memory that is kept."""

from __future__ import annotations

import math

import torch


class _Workspace:
    """Reusable output buffers for per-example gradient tiles, one flat buffer per role (training tile, bank tile,
    ...). A tile is tens to hundreds of MB; on CPU, allocating it afresh for every module and block costs more than the
    matmul that fills it (the allocator maps new pages), so each role's buffer is kept (grown when needed). A tile is
    consumed (copied or multiplied) before its role's buffer is taken again."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, role: str) -> torch.Tensor:
        key = (role, dtype, device)
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            self._buffers.pop(key, None)
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)


class _Arena:
    """Tensors bump-allocated in a few large slabs that are kept and refilled (:meth:`reset`) from one run of samples
    to the next (training blocks, test chunks, checkpoints). The per-example gradients of a training block are GBs;
    allocated afresh for every block, they would be handed back to the OS and faulted in again each time, which on
    CPU (worst in a virtual machine: seconds per GB) costs more than the products computed from them."""

    SLAB = 1 << 27  # bytes
    ALIGN = 64

    def __init__(self, device: torch.device):
        self.device = device
        self.slabs: list[torch.Tensor] = []
        self.reset()

    def reset(self) -> None:
        self._slab, self._used = 0, 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * (torch.finfo(dtype).bits // 8)
        while self._slab < len(self.slabs) and self._used + nbytes > self.slabs[self._slab].numel():
            self._slab, self._used = self._slab + 1, 0
        if self._slab == len(self.slabs):
            self.slabs.append(torch.empty(max(self.SLAB, nbytes), dtype=torch.uint8, device=self.device))
        out = self.slabs[self._slab][self._used:self._used + nbytes].view(dtype).view(shape)
        self._used += -(-nbytes // self.ALIGN) * self.ALIGN
        return out

