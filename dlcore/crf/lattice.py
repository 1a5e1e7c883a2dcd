"""The permutohedral lattice (Adams, Baek, Davis, Eurographics 2010), as Krähenbühl's dense CRF uses it.

A Gaussian filter over N points in a d-dimensional feature space,

    out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j,

costs O(N^2) done directly (see `dlcore.crf.exact`). The lattice makes it O(N (d+1)^2):

1. **splat**: each point lies in one simplex of the permutohedral lattice (the tessellation of the plane
   sum(x) = 0 in R^{d+1}); its value goes to the d+1 vertices of that simplex, weighted by its barycentric
   coordinates (Adams et al. 2010, Sec. 3.1);
2. **blur**: a [1/2, 1, 1/2] filter along each of the d+1 lattice directions, one direction after the
   other (Sec. 3.2; the ratio 1:2:1 of the paper, scaled as Krähenbühl's code does);
3. **slice**: each point reads back the barycentric mix of its d+1 vertices (Sec. 3.3), times Krähenbühl's
   constant alpha = 1 / (1 + 2^-d).

Everything that depends only on the features (simplex, vertex ids, weights, neighbours) is computed once
per image in `PermutohedralLattice(...)`; then splat, blur and slice are sparse matrices, so filtering is
a few `torch.sparse.mm` calls on CPU (MKL) or CUDA (cuSPARSE) with the same code. The arithmetic of the
build (elevation, rounding to the nearest remainder-0 point, ranks) follows pydensecrf's SSE path in
float32, so the lattice is the same one pydensecrf builds.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

# Integer key coordinates are packed into one int64 per vertex; 62 bits leave room for the +/- (d+1)
# neighbour offsets without overflow.
_KEY_BITS = 62


def lattice_memory_bytes(num_points: int, d: int, channels: int = 1) -> int:
    """Upper bound on the memory `PermutohedralLattice` needs for N points in d dimensions.

    Worst case: every point brings d+1 new vertices (M = N (d+1)). Counted: the int64 keys [N, d+1, d]
    and codes, the splat/slice matrices (index + value per nonzero, twice), d+1 blur matrices
    (3 nonzeros per vertex) and two [M, channels] float buffers while filtering.
    """
    n_vertices = num_points * (d + 1)
    keys = num_points * (d + 1) * (d + 1) * 8
    splat_slice = 2 * num_points * (d + 1) * (8 + 4) * 2
    blur = (d + 1) * n_vertices * 3 * (8 + 4)
    buffers = 2 * n_vertices * channels * 4
    return keys + splat_slice + blur + buffers


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on `device`: CUDA's free memory, or the host's available RAM (Linux) / total RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_lattice_fits(num_points: int, d: int, channels: int, device: torch.device, max_bytes: int | None = None) -> None:
    """Refuse, before allocating anything, a lattice whose worst-case memory exceeds what `device` has free."""
    need = lattice_memory_bytes(num_points, d, channels)
    limit = available_memory_bytes(device) if max_bytes is None else int(max_bytes)
    if need > limit:
        raise ValueError(
            f"the permutohedral lattice for {num_points} pixels in {d}-D with {channels} labels may need up to "
            f"{need / 2**30:.2f} GiB, more than the {limit / 2**30:.2f} GiB available on {device}; "
            "downscale the image, run the CRF on tiles, or raise max_memory_bytes if you know it fits"
        )


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Project features [N, d] onto the plane sum(x) = 0 of R^{d+1}, scaled as Adams et al. 2010, Sec. 3.1.

    The scale makes the lattice blur a Gaussian of standard deviation 1 in feature units; the float32
    operation order is pydensecrf's, so rounding to lattice points below ties exactly as there.
    """
    n, d = features.shape
    inv_std_dev = float(torch.tensor(math.sqrt(2.0 / 3.0) * (d + 1), dtype=torch.float32))
    elevated = features.new_empty(n, d + 1)
    sm = features.new_zeros(n)
    for j in range(d, 0, -1):
        scale = float(torch.tensor(1.0 / math.sqrt((j + 1) * j) * inv_std_dev, dtype=torch.float32))
        cf = features[:, j - 1] * scale
        elevated[:, j] = sm - j * cf
        sm = sm + cf
    elevated[:, 0] = sm
    return elevated


def _simplex(elevated: torch.Tensor):
    """Nearest remainder-0 lattice point, coordinate order and barycentric weights (Adams et al., Sec. 3.1).

    Returns rem0 [N, d+1] (int64), by_rank [N, d+1] (by_rank[:, k] = the coordinate of rank k, rank 0 =
    largest remainder, ties to the lower index as pydensecrf) and barycentric weights [N, d+1].
    """
    n, d1 = elevated.shape
    d = d1 - 1
    inv_d1 = float(torch.tensor(1.0 / d1, dtype=torch.float32))
    v = torch.round(elevated * inv_d1)  # round half to even, as SSE's cvtps
    rem0 = v * d1
    excess = v.sum(1).long()  # how far the rounded point is off the plane, in units of d+1
    by_rank0 = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
    rank0 = torch.empty_like(by_rank0).scatter_(1, by_rank0, torch.arange(d1, device=elevated.device).expand(n, d1))
    shifted = rank0 + excess[:, None]
    wrap = (shifted < 0).long() - (shifted >= d1).long()  # bring the point back onto the plane
    rem0 = rem0.long() + d1 * wrap
    # after the shift, rank k holds the coordinate that had rank k - excess (mod d+1)
    by_rank = by_rank0.gather(1, (torch.arange(d1, device=elevated.device) - excess[:, None]) % d1)
    delta = ((elevated - rem0.to(elevated.dtype)) * inv_d1).gather(1, by_rank).flip(1)  # delta[:, p]: rank d - p
    bary = torch.empty_like(delta)
    bary[:, 1:] = delta[:, 1:] - delta[:, :-1]
    bary[:, 0] = delta[:, 0] + (1 - delta[:, d])
    return rem0, by_rank, bary


class _Packing:
    """Mixed-radix packing of integer keys (d coordinates, plus a group id, e.g. the image in a batch) into int64."""

    def __init__(self, rem0: torch.Tensor, groups: int):
        d = rem0.shape[1] - 1
        # vertex keys lie within d+1 of rem0, and neighbours within d+1 of a vertex: keep both inside the field
        margin = 2 * (d + 1)
        self.low = rem0[:, :d].amin(0) - margin
        spans = (rem0[:, :d].amax(0) + margin - self.low + 1).tolist() + [groups]
        bits = [max(1, math.ceil(math.log2(s))) for s in spans]
        if sum(bits) > _KEY_BITS:
            raise ValueError(
                f"lattice keys need {sum(bits)} bits, more than {_KEY_BITS}: the features span too many kernel "
                "widths; use larger sigmas (sigma_alpha, sigma_beta, sigma_gamma) or a smaller image"
            )
        shifts, total = [], 0
        for b in bits:
            shifts.append(total)
            total += b
        self.units = [1 << s for s in shifts]

    def vertex_codes(self, rem0: torch.Tensor, by_rank: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
        """Packed keys [N, d+1] of each point's simplex vertices.

        Vertex r (the canonical simplex, Adams et al. Sec. 3.1) is rem0 + r, minus d+1 on the r coordinates
        of highest rank (ranks d-r+1..d); the last coordinate is implied by sum = 0 and not stored.
        """
        d1 = rem0.shape[1]
        d = d1 - 1
        units = torch.tensor(self.units[:d] + [0], device=rem0.device)
        base = ((rem0[:, :d] - self.low) * units[:d]).sum(1)
        if group is not None:
            base = base + group * self.units[d]
        unit_by_rank = units[by_rank]  # [N, d+1]: the unit of the coordinate with rank k
        # high[:, r] = sum of units of the coordinates with rank > d - r
        high = torch.cat([torch.zeros_like(base)[:, None], unit_by_rank.flip(1).cumsum(1)[:, :d]], 1)
        r = torch.arange(d1, device=rem0.device)
        return base[:, None] + r * sum(self.units[:d]) - d1 * high

    def unit(self, axis: int) -> int:
        return self.units[axis]


class PermutohedralLattice:
    """Gaussian filtering of values at N points with features [N, d] (already divided by the sigmas).

    Built once (`PermutohedralLattice(features)`), then `lattice.filter(values [N, C])` any number of times.
    `group` [N] (int64, optional) keeps points of different images apart, so a batch is one lattice.
    Kept after the build: `offset` [N, d+1] vertex ids, `barycentric` [N, d+1] weights and, per lattice
    direction, the ids of each vertex's two neighbours; `FusedFilter` turns them into sparse matrices.
    """

    def __init__(self, features: torch.Tensor, group: torch.Tensor | None = None, max_memory_bytes: int | None = None):
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"features must be [N, d] with d >= 1, got shape {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features contain NaN or Inf; check the image and the sigmas (they must be > 0)")
        n, d = features.shape
        check_lattice_fits(n, d, 1, features.device, max_memory_bytes)
        self.num_points, self.d = n, d
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))  # Krähenbühl's correction of the blur's total weight
        rem0, by_rank, bary = _simplex(_elevate(features.float()))
        groups = 1 if group is None else int(group.max()) + 1
        packing = _Packing(rem0, groups)
        codes = packing.vertex_codes(rem0, by_rank, None if group is None else group.long())
        del rem0, by_rank
        self._vertex_codes, offset = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)
        self.num_vertices = self._vertex_codes.numel()
        self.offset = offset.view(n, d + 1)  # vertex id of each point's d+1 simplex corners
        self.barycentric = bary  # [N, d+1] weights, summing to 1
        self.neighbours = [self._neighbours(axis, packing) for axis in range(d + 1)]
        del self._vertex_codes

    def _find(self, codes: torch.Tensor) -> torch.Tensor:
        """Vertex id of each code, or -1 where the lattice has no such vertex."""
        pos = torch.searchsorted(self._vertex_codes, codes).clamp_(max=self.num_vertices - 1)
        return torch.where(self._vertex_codes[pos] == codes, pos, torch.full_like(pos, -1))

    def _neighbours(self, axis: int, packing: _Packing) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (or -1) of each vertex's two neighbours along lattice direction `axis` (Adams et al., Sec. 3.2).

        They are key - 1 (every coordinate) + (d+1) e_j and key + 1 - (d+1) e_j; for j = d the
        +/-(d+1) falls on the implied last coordinate.
        """
        d = self.d
        ones = sum(packing.unit(i) for i in range(d))
        step = 0 if axis == d else (d + 1) * packing.unit(axis)
        return self._find(self._vertex_codes - ones + step), self._find(self._vertex_codes + ones - step)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Approximate sum_j exp(-|f_i - f_j|^2 / 2) v_j for values [N, C], as pydensecrf computes it.

        The plain gather/scatter form of splat, blur, slice: clear and cheap for a few channels (the kernel
        normalisation uses it with C = 1); `FusedFilter` is the fast form for mean-field.
        """
        values = values.float()
        flat = self.offset.reshape(-1)
        splat = values.new_zeros(self.num_vertices + 1, values.shape[1])  # last row: the missing neighbour, 0
        splat.index_add_(0, flat, (self.barycentric[:, :, None] * values[:, None, :]).reshape(-1, values.shape[1]))
        v = splat
        for n1, n2 in self.neighbours:  # index -1 reads the zero row
            v = torch.cat([v[:-1] + 0.5 * (v[n1] + v[n2]), v[-1:]])
        return self.alpha * (v[self.offset] * self.barycentric[:, :, None]).sum(1)


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """A CSR tensor built from indices this module constructed valid (so no invariant check), minus the beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


def _csr_from_rows(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, size) -> torch.Tensor:
    """CSR matrix from triplets without duplicates; a stable sort by row keeps each row's columns in order."""
    rows, order = torch.sort(rows, stable=True)
    counts = torch.bincount(rows, minlength=size[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return _csr(crow, cols[order], values[order], size)


class FusedFilter:
    """sum_k post_k * K_k(pre_k * v) for several lattices over the same N points, as one splat, blur, slice.

    The lattices' vertices are stacked (highest d first), so splat and slice are single sparse matrices
    with the per-point scales folded in, and blur direction j only touches the vertices of the lattices
    that have a direction j (a prefix of the stack). This is how mean-field filters with the appearance
    and the smoothness kernel in one pass (Krähenbühl & Koltun 2011, Sec. 4 filter them separately).
    """

    def __init__(self, lattices, pre, post):
        order = sorted(range(len(lattices)), key=lambda k: -lattices[k].d)
        lattices = [lattices[k] for k in order]
        pre = [pre[k] for k in order]
        post = [post[k] for k in order]
        n = lattices[0].num_points
        device = lattices[0].offset.device
        base, total = [], 0
        for lat in lattices:
            base.append(total)
            total += lat.num_vertices
        self.num_vertices = total
        points = torch.arange(n, device=device)
        rows = torch.cat([(lat.offset + b).reshape(-1) for lat, b in zip(lattices, base)])
        cols = torch.cat([points.repeat_interleave(lat.d + 1) for lat in lattices])
        vals = torch.cat([(lat.barycentric * p[:, None]).reshape(-1) for lat, p in zip(lattices, pre)])
        self.splat = _csr_from_rows(rows, cols, vals, (total, n))
        slice_cols = torch.cat([lat.offset + b for lat, b in zip(lattices, base)], 1)
        slice_vals = torch.cat([lat.barycentric * (lat.alpha * q)[:, None] for lat, q in zip(lattices, post)], 1)
        slice_cols, order = slice_cols.sort(1)  # sorted columns per row, as sparse backends expect
        width = slice_cols.shape[1]
        crow = torch.arange(0, n * width + 1, width, device=device)
        self.slice = _csr(crow, slice_cols.reshape(-1), slice_vals.gather(1, order).reshape(-1), (n, total))
        self.blur = []
        for axis in range(lattices[0].d + 1):
            active = [(lat, b) for lat, b in zip(lattices, base) if lat.d >= axis]
            size = sum(lat.num_vertices for lat, _ in active)
            self.blur.append(self._blur_matrix(axis, active, size))

    @staticmethod
    def _blur_matrix(axis: int, active, size: int) -> torch.Tensor:
        """Sparse [size, size]: v_i + (v_n1 + v_n2) / 2 along direction `axis`; missing neighbours count 0."""
        cols, vals = [], []
        for lat, b in active:
            n1, n2 = lat.neighbours[axis]
            own = torch.arange(lat.num_vertices, device=n1.device)
            c = torch.stack([n1, own, n2], 1)
            c, order = torch.where(c >= 0, c + b, c).sort(1)  # missing (-1) sort first; columns ascending
            cols.append(c)
            vals.append(torch.tensor([0.5, 1.0, 0.5], device=c.device).expand_as(c).gather(1, order))
        cols, vals = torch.cat(cols), torch.cat(vals)
        found = cols >= 0
        crow = torch.cat([cols.new_zeros(1), found.sum(1).cumsum(0)])
        return _csr(crow, cols[found], vals[found], (size, size))

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        v = torch.sparse.mm(self.splat, values)
        for blur in self.blur:
            active = blur.shape[0]
            if active == self.num_vertices:
                v = torch.sparse.mm(blur, v)
            else:
                v = torch.cat([torch.sparse.mm(blur, v[:active]), v[active:]])
        return torch.sparse.mm(self.slice, v)
