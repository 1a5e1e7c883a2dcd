"""Mean-field on a GPU: the splat, blur and slice of `lattice.py` as Triton kernels.

`FusedFilter` runs each mean-field iteration as d+3 sparse products (weighted sums of gathered rows,
`embedding_bag`), and the softmax is two more passes over [N, L]; as cuSPARSE products they took 72 ms of a
batch of 16 VOC-size images on an H100 (benchmarks/RESULTS.md, measured before the products became
`embedding_bag` calls). Here one iteration is d+5 kernel launches, with the softmax fused into the slice:

1. `_splat_pieces` + `_sum_pieces`: vertex v gathers the (weighted) Q rows of the points in its simplices.
   The lattice build left the entries sorted by vertex (`order`, `crow`), so this is a segmented sum, cut
   into pieces of equal work (`_Splat`): no atomics, deterministic.
2. `_blur`: v + (v_n1 + v_n2) / 2 along one lattice direction (Adams et al. 2010, Sec. 3.2); d+1 launches.
3. `_slice_softmax`: each point reads its 9 vertices (6 appearance, 3 smoothness) back, and the same kernel
   finishes the mean-field update, Q = softmax(message - U) (Krähenbühl & Koltun 2011, Algorithm 1).

The kernels read the arrays `FusedFilter` keeps; the numbers are those of its sparse form and
`meanfield.mean_field` up to float32 summation order (tests/test_gpu.py, and on the CPU through Triton's
interpreter in tests/test_crf.py).
Triton ships with PyTorch's CUDA wheels; without it, or without a GPU, `dlcore.crf` uses the sparse path.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds: the sparse path is used
    triton = None


def available(device: torch.device) -> bool:
    return triton is not None and device.type == "cuda"


PIECE = 32  # the splat sums at most this many entries per program; longer rows are split (see _Splat)
FEW = 4  # vertices of up to FEW pieces are summed side by side; each with more gets a program of its own
# rows per program and warps per kernel, from a sweep on an H100 (batch 16, 500 x 375: within 3% of each other
# around these; pieces of 32 entries beat 64/128/256 by 10-35%; scheduling pieces by pixel order lost 15%)
CONFIG = {"splat": (16, 4), "sum": (16, 2), "blur": (32, 2), "slice": (32, 4)}


class _Splat:
    """The splat's rows (entries sorted by vertex) cut into pieces of at most PIECE entries.

    Rows are very uneven (on a VOC photograph the median appearance vertex has 2 entries, the largest
    12,000: a flat wall), so one program per row waits on the longest. Pieces bound every program's loop;
    two more kernels add the pieces of each vertex in a fixed order (deterministic): side by side for
    vertices of up to FEW pieces, one program per vertex, BLOCK_P pieces at a time, for the rest.
    """

    def __init__(self, pairwise):
        crow = pairwise.splat_crow
        pieces = (crow[1:] - crow[:-1] + PIECE - 1) // PIECE  # >= 1: every vertex has an entry
        self.vertex_pieces = torch.cat([pieces.new_zeros(1), pieces.cumsum(0)])
        num_pieces = int(self.vertex_pieces[-1])
        vertex = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), pieces,
                                         output_size=num_pieces)
        self.start = crow[vertex] + (torch.arange(num_pieces, device=crow.device) - self.vertex_pieces[vertex]) * PIECE
        self.end = torch.minimum(self.start + PIECE, crow[vertex + 1])
        self.points = pairwise.splat_points.int()
        self.weights = pairwise.splat_weights.float().contiguous()
        self.num_pieces = num_pieces
        # vertices of more than FEW pieces are summed by a program each (a flat wall's vertex has hundreds)
        self.hot = (pieces > FEW).nonzero()[:, 0]

    def __call__(self, q: torch.Tensor, v: torch.Tensor, partial: torch.Tensor, block_l: int) -> None:
        num_labels = q.shape[1]
        rows, warps = CONFIG["splat"]
        _splat_pieces[(triton.cdiv(self.num_pieces, rows),)](q, self.points, self.weights, self.start, self.end, partial,
                                                              self.num_pieces, num_labels, BLOCK_S=rows, BLOCK_L=block_l,
                                                              num_warps=warps)
        rows, warps = CONFIG["sum"]
        _sum_pieces[(triton.cdiv(v.shape[0], rows),)](partial, self.vertex_pieces, v, v.shape[0], num_labels,
                                                       FEW=FEW, BLOCK_S=rows, BLOCK_L=block_l, num_warps=warps)
        if self.hot.numel():
            _sum_pieces_hot[(self.hot.numel(),)](partial, self.vertex_pieces, self.hot, v, num_labels,
                                                 BLOCK_P=32, BLOCK_L=block_l, num_warps=4)


def mean_field(unary: torch.Tensor, pairwise, iterations: int) -> torch.Tensor:
    """`dlcore.crf.meanfield.mean_field` (without the trace) for a CUDA `FusedFilter`, in Triton kernels."""
    n, num_labels = unary.shape
    unary = unary.float().contiguous()
    splat = _Splat(pairwise)
    slice_vertices = pairwise.slice_vertices.int().contiguous()
    slice_weights = pairwise.slice_weights.float().contiguous()
    neighbours = [nbr.int().contiguous() for nbr in pairwise.neighbours]
    m = pairwise.num_vertices
    q = torch.softmax(-unary, dim=1)
    v, w = unary.new_empty(m, num_labels), unary.new_empty(m, num_labels)
    partial = unary.new_empty(splat.num_pieces, num_labels)
    block_l = triton.next_power_of_2(num_labels)
    (blur_rows, blur_warps), (slice_rows, slice_warps) = CONFIG["blur"], CONFIG["slice"]
    for _ in range(iterations):
        splat(q, v, partial, block_l)
        for nbr in neighbours:  # rows past nbr's length belong to lattices without this direction: copied
            _blur[(triton.cdiv(m, blur_rows),)](v, nbr, w, m, nbr.shape[0], num_labels, BLOCK_V=blur_rows,
                                                BLOCK_L=block_l, num_warps=blur_warps)
            v, w = w, v
        _slice_softmax[(triton.cdiv(n, slice_rows),)](v, slice_vertices, slice_weights, unary, q, n, num_labels,
                                                       K=slice_vertices.shape[1], BLOCK_P=slice_rows, BLOCK_L=block_l,
                                                       num_warps=slice_warps)
    return q


if triton is not None:

    @triton.jit
    def _splat_pieces(q_ptr, point_ptr, weight_ptr, start_ptr, end_ptr, out_ptr, S, L,
                      BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr):
        """out[s] = sum over the entries e of piece s of weight[e] * q[point[e]]; BLOCK_S pieces side by side."""
        pieces = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
        inside = pieces < S
        labels = tl.arange(0, BLOCK_L)
        start = tl.load(start_ptr + pieces, mask=inside, other=0)
        end = tl.load(end_ptr + pieces, mask=inside, other=0)
        acc = tl.zeros([BLOCK_S, BLOCK_L], dtype=tl.float32)
        for j in range(0, tl.max(end - start)):
            e = start + j
            live = e < end
            point = tl.load(point_ptr + e, mask=live, other=0).to(tl.int64)
            weight = tl.load(weight_ptr + e, mask=live, other=0.0)
            mask = live[:, None] & (labels < L)[None, :]
            acc += weight[:, None] * tl.load(q_ptr + point[:, None] * L + labels[None, :], mask=mask, other=0.0)
        tl.store(out_ptr + pieces[:, None] * L + labels[None, :], acc, mask=inside[:, None] & (labels < L)[None, :])

    @triton.jit
    def _sum_pieces(partial_ptr, crow_ptr, v_ptr, M, L, FEW: tl.constexpr, BLOCK_S: tl.constexpr,
                    BLOCK_L: tl.constexpr):
        """v[i] = sum of partial[crow[i]:crow[i+1]], in order, for the vertices of at most FEW pieces."""
        rows = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
        labels = tl.arange(0, BLOCK_L)
        start = tl.load(crow_ptr + rows, mask=rows < M, other=0)
        end = tl.load(crow_ptr + rows + 1, mask=rows < M, other=0)
        mine = (rows < M) & (end - start <= FEW)
        acc = tl.zeros([BLOCK_S, BLOCK_L], dtype=tl.float32)
        for j in tl.static_range(FEW):
            piece = start + j
            mask = (mine & (piece < end))[:, None] & (labels < L)[None, :]
            acc += tl.load(partial_ptr + piece[:, None] * L + labels[None, :], mask=mask, other=0.0)
        tl.store(v_ptr + rows[:, None] * L + labels[None, :], acc, mask=mine[:, None] & (labels < L)[None, :])

    @triton.jit
    def _sum_pieces_hot(partial_ptr, crow_ptr, hot_ptr, v_ptr, L, BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr):
        """v[i] = sum of partial[crow[i]:crow[i+1]] for one vertex i of many pieces, BLOCK_P pieces at a time."""
        vertex = tl.load(hot_ptr + tl.program_id(0))
        start = tl.load(crow_ptr + vertex)
        end = tl.load(crow_ptr + vertex + 1)
        labels = tl.arange(0, BLOCK_L)
        acc = tl.zeros([BLOCK_L], dtype=tl.float32)
        for p0 in range(start, end, BLOCK_P):
            piece = p0 + tl.arange(0, BLOCK_P)
            mask = (piece < end)[:, None] & (labels < L)[None, :]
            acc += tl.sum(tl.load(partial_ptr + piece[:, None] * L + labels[None, :], mask=mask, other=0.0), axis=0)
        tl.store(v_ptr + vertex * L + labels, acc, mask=labels < L)

    @triton.jit
    def _blur(v_ptr, nbr_ptr, out_ptr, M, ACTIVE, L, BLOCK_V: tl.constexpr, BLOCK_L: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
        labels = tl.arange(0, BLOCK_L)
        inside = rows < M
        mask = inside[:, None] & (labels < L)[None, :]
        n1 = tl.load(nbr_ptr + 2 * rows, mask=rows < ACTIVE, other=-1).to(tl.int64)
        n2 = tl.load(nbr_ptr + 2 * rows + 1, mask=rows < ACTIVE, other=-1).to(tl.int64)
        own = tl.load(v_ptr + rows[:, None] * L + labels[None, :], mask=mask, other=0.0)
        a = tl.load(v_ptr + n1[:, None] * L + labels[None, :], mask=mask & (n1 >= 0)[:, None], other=0.0)
        b = tl.load(v_ptr + n2[:, None] * L + labels[None, :], mask=mask & (n2 >= 0)[:, None], other=0.0)
        tl.store(out_ptr + rows[:, None] * L + labels[None, :], own + 0.5 * (a + b), mask=mask)

    @triton.jit
    def _slice_softmax(v_ptr, vertex_ptr, weight_ptr, unary_ptr, q_ptr, N, L, K: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_L: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        labels = tl.arange(0, BLOCK_L)
        inside = rows < N
        valid = labels < L
        mask = inside[:, None] & valid[None, :]
        message = tl.zeros([BLOCK_P, BLOCK_L], dtype=tl.float32)
        for k in tl.static_range(K):
            vertex = tl.load(vertex_ptr + rows * K + k, mask=inside, other=0).to(tl.int64)
            weight = tl.load(weight_ptr + rows * K + k, mask=inside, other=0.0)
            message += weight[:, None] * tl.load(v_ptr + vertex[:, None] * L + labels[None, :], mask=mask, other=0.0)
        x = message - tl.load(unary_ptr + rows[:, None] * L + labels[None, :], mask=mask, other=0.0)
        x = tl.where(valid[None, :], x, float("-inf"))
        e = tl.exp(x - tl.max(x, axis=1)[:, None])
        tl.store(q_ptr + rows[:, None] * L + labels[None, :], e / tl.sum(e, axis=1)[:, None], mask=mask)
