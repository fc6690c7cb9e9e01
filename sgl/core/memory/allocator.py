"""The KV slot allocator: hands out token slots (page size 1) or whole pages of the KV pool.

The scheduler calls it every step, so the free list is a CPU stack of page ids with a top pointer: allocating and
freeing cost O(pages moved), never O(pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenAllocator:
    """Owns which KV slots are free. Slots are int64 indices into the KV pool's rows.

    NOTE: page ``p`` covers slots ``[p * page_size, (p + 1) * page_size)``; page 0 is the padding sink and is never
    handed out, so the usable pages are ``1 .. size // page_size`` (slots ``[page_size, size + page_size)``), which
    matches KVPool's layout.
    NOTE: with page_size > 1 a token's slot always satisfies ``slot % page_size == position % page_size``; the
    extend/decode allocators keep that so paged attention kernels can address a request's pages by position.
    """

    def __init__(self, size: int, page_size: int = 1, device: torch.device | str = "cpu") -> None:
        if page_size < 1:
            raise ValueError(f"page size must be >= 1, got {page_size}")
        if size < 0 or size % page_size:
            raise ValueError(f"allocator size {size} is not a non-negative multiple of page size {page_size}")
        self.size = size
        self.page_size = page_size
        self.num_pages = size // page_size
        self.device = torch.device(device)
        self._offsets = torch.arange(page_size, dtype=torch.int64)
        # NOTE: the free pages are _stack[:_top]; _is_free[p] mirrors membership so double frees are caught in O(k).
        self._stack = torch.empty(self.num_pages, dtype=torch.int64)
        self._is_free = torch.zeros(self.num_pages + 1, dtype=torch.bool)
        self._top = 0
        self.clear()

    # ---- queries -------------------------------------------------------------------------------------------------

    def available_size(self) -> int:
        """Free slots, counted in tokens (whole free pages times page_size)."""
        return self._top * self.page_size

    def free_slot_mask(self) -> torch.Tensor:
        """Bool [size + page_size] on the CPU, True where a slot is free. For debug checks and tests."""
        return self._is_free.repeat_interleave(self.page_size)

    # ---- allocation ----------------------------------------------------------------------------------------------

    def alloc(self, n: int) -> torch.Tensor | None:
        """``n`` slots (page size 1) or ``n // page_size`` whole pages; None when they do not fit."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} slots")
        if n % self.page_size:
            raise ValueError(
                f"alloc({n}) with page size {self.page_size}: use alloc_extend for partial pages"
            )
        pages = self._pop(n // self.page_size)
        if pages is None:
            return None
        return self._to_device(self._page_slots(pages))

    def alloc_extend(
        self, prefix_lens: Sequence[int], seq_lens: Sequence[int], last_locs: Sequence[int]
    ) -> torch.Tensor | None:
        """Slots for tokens ``prefix_lens[i] .. seq_lens[i] - 1`` of each request, concatenated in request order.

        ``last_locs[i]`` is the slot of token ``prefix_lens[i] - 1`` (-1 when the prefix is empty). All or nothing:
        None when the batch does not fit, and then nothing is allocated.
        """
        if not (len(prefix_lens) == len(seq_lens) == len(last_locs)):
            raise ValueError("prefix_lens, seq_lens and last_locs must have one entry per request")
        ps = self.page_size
        if ps == 1:
            total = 0
            for p, s in zip(prefix_lens, seq_lens):
                if s < p:
                    raise ValueError(f"seq_len {s} < prefix_len {p}")
                total += s - p
            return self.alloc(total)
        # Plan first (Python ints), pop once, then lay out: keeps the all-or-nothing rule trivially true.
        # (first slot of the head run, head tokens, tokens on new pages) per request
        plan: list[tuple[int, int, int]] = []
        num_pages = 0
        for p, s, last in zip(prefix_lens, seq_lens, last_locs):
            n = s - p
            if n < 0:
                raise ValueError(f"seq_len {s} < prefix_len {p}")
            head = 0
            if p % ps and n:
                self._check_last_loc(p, last)
                head = min(n, ps - p % ps)
            rest = n - head
            plan.append((last + 1, head, rest))
            num_pages += -(-rest // ps)
        pages = self._pop(num_pages)
        if pages is None:
            return None
        out: list[int] = []
        page_list = pages.tolist()
        cursor = 0
        for first, head, rest in plan:
            out.extend(range(first, first + head))
            while rest > 0:
                base = page_list[cursor] * ps
                take = min(rest, ps)
                out.extend(range(base, base + take))
                cursor += 1
                rest -= take
        return self._to_device(torch.tensor(out, dtype=torch.int64))

    def alloc_decode(self, seq_lens: Sequence[int], last_locs: Sequence[int]) -> torch.Tensor | None:
        """One slot per request for its token ``seq_lens[i] - 1``; None (nothing allocated) when it does not fit."""
        if len(seq_lens) != len(last_locs):
            raise ValueError("seq_lens and last_locs must have one entry per request")
        ps = self.page_size
        if ps == 1:
            return self.alloc(len(seq_lens))
        fresh = 0
        for s, last in zip(seq_lens, last_locs):
            if s < 1:
                raise ValueError(f"decode seq_len must be >= 1, got {s}")
            pos = s - 1
            if pos % ps == 0:
                fresh += 1
            else:
                self._check_last_loc(pos, last)
        pages = self._pop(fresh)
        if pages is None:
            return None
        page_list = pages.tolist()
        out: list[int] = []
        cursor = 0
        for s, last in zip(seq_lens, last_locs):
            if (s - 1) % ps == 0:
                out.append(page_list[cursor] * ps)
                cursor += 1
            else:
                out.append(last + 1)
        return self._to_device(torch.tensor(out, dtype=torch.int64))

    # ---- release -------------------------------------------------------------------------------------------------

    # NOTE: up to this many slots a free checks and sorts them as Python ints: a speculative step frees a few rejected
    # drafts per request, where the tensor path's dozen small ops cost more than the work
    small_free = 64

    def free(self, slots: torch.Tensor) -> None:
        """Frees the pages holding ``slots``. Callers free only pages they wholly own; a double free raises."""
        if slots.numel() == 0:
            return
        flat = slots.reshape(-1).to(device="cpu", dtype=torch.int64)
        if flat.numel() <= self.small_free:
            self._free_few(flat.tolist())
            return
        uniq = torch.unique(flat)  # sorted
        if uniq.numel() != flat.numel():
            raise RuntimeError("KV slots freed twice: the same slot appears more than once in one free()")
        lo, hi = self.page_size, self.size + self.page_size
        if int(uniq[0]) < lo or int(uniq[-1]) >= hi:
            raise ValueError(f"KV slots outside [{lo}, {hi}) cannot be freed")
        pages = torch.unique_consecutive(uniq // self.page_size)
        if bool(self._is_free[pages].any()):
            raise RuntimeError("KV slots freed twice: a page being freed is already free")
        k = pages.numel()
        # NOTE: pushed reversed so the next pops hand these pages back in ascending order.
        self._stack[self._top : self._top + k] = pages.flip(0)
        self._top += k
        self._is_free[pages] = True

    def _free_few(self, slots: list[int]) -> None:
        """``free`` of a few slots, with the same checks and the same order of the pages pushed."""
        if len(set(slots)) != len(slots):
            raise RuntimeError("KV slots freed twice: the same slot appears more than once in one free()")
        lo, hi = self.page_size, self.size + self.page_size
        if min(slots) < lo or max(slots) >= hi:
            raise ValueError(f"KV slots outside [{lo}, {hi}) cannot be freed")
        pages = sorted({s // self.page_size for s in slots}, reverse=True)
        index = torch.tensor(pages, dtype=torch.int64)
        if bool(self._is_free[index].any()):
            raise RuntimeError("KV slots freed twice: a page being freed is already free")
        k = len(pages)
        # NOTE: pushed in descending order so the next pops hand these pages back in ascending order
        self._stack[self._top : self._top + k] = index
        self._top += k
        self._is_free[index] = True

    def clear(self) -> None:
        """Marks every usable page free (the sink page 0 never is)."""
        self._stack.copy_(torch.arange(self.num_pages, 0, -1, dtype=torch.int64))
        self._top = self.num_pages
        self._is_free.fill_(True)
        self._is_free[0] = False

    # ---- internals -----------------------------------------------------------------------------------------------

    def _pop(self, k: int) -> torch.Tensor | None:
        if k > self._top:
            return None
        # NOTE: flip copies, so the result never aliases the stack.
        pages = self._stack[self._top - k : self._top].flip(0)
        self._top -= k
        self._is_free[pages] = False
        return pages

    def _page_slots(self, pages: torch.Tensor) -> torch.Tensor:
        if self.page_size == 1:
            return pages
        return (pages[:, None] * self.page_size + self._offsets).reshape(-1)

    def _check_last_loc(self, pos: int, last: int) -> None:
        """``last`` must be the slot of token ``pos - 1`` sitting at the matching offset of its page."""
        if last < self.page_size or last % self.page_size != (pos - 1) % self.page_size:
            raise ValueError(
                f"last_loc {last} cannot hold token {pos - 1} with page size {self.page_size}: "
                "a token's slot must sit at its position's offset in the page"
            )

    def _to_device(self, slots: torch.Tensor) -> torch.Tensor:
        return slots if self.device.type == "cpu" else slots.to(self.device)
