"""Session 23: the sign of x = -0 through the quant's division and clamp (why divide_by_row_scale copies x's sign).

    python benchmarks/experiments_s23/s23_zero_sign.py

Prints, per mode, the fp8 bytes, the fp32 quotients and their sign bits for x = [-0, +0, -1e-30, -1, 1, nan, -3,
1000] over scale 2: 0 the kept division and clamp (NaN kept), 1 the same with Triton's default clamp, 2 IEEE
division (div.rn) and the NaN-keeping clamp, 3 the clamp as maximum / minimum, 4 the division alone. Before the
sign copy (the form q - (q*scale - x) * inv with two corrections) modes 0, 1, 3 and 4 gave +0 (byte 0) for -0 on
an H100, where IEEE arithmetic gives -0 and div.rn gave byte 128; with it, all give 128.
"""
import torch
import triton
import triton.language as tl

from rocm_attn.kernels.triton_kernels.per_token_quant import divide_by_row_scale


@triton.jit
def _kernel(x_ptr, out_ptr, out32_ptr, s, MODE: tl.constexpr):
    offs = tl.arange(0, 8)
    x = tl.load(x_ptr + offs)
    if MODE == 0:
        q = tl.clamp(divide_by_row_scale(x, s), -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
    elif MODE == 1:
        q = tl.clamp(divide_by_row_scale(x, s), -448.0, 448.0)
    elif MODE == 2:
        q = tl.clamp(tl.math.div_rn(x, tl.zeros_like(x) + s), -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
    elif MODE == 3:
        q = tl.minimum(tl.maximum(divide_by_row_scale(x, s), -448.0, propagate_nan=tl.PropagateNan.ALL), 448.0,
                       propagate_nan=tl.PropagateNan.ALL)
    else:
        q = divide_by_row_scale(x, s)
    tl.store(out32_ptr + offs, q)
    tl.store(out_ptr + offs, q.to(tl.float8e4nv))


def main():
    x = torch.tensor([-0.0, 0.0, -1e-30, -1.0, 1.0, float("nan"), -3.0, 1000.0], device="cuda")
    for mode in range(5):
        out = torch.empty(8, dtype=torch.float8_e4m3fn, device="cuda")
        out32 = torch.empty(8, device="cuda")
        _kernel[(1,)](x, out, out32, 2.0, MODE=mode)
        print(mode, out.view(torch.uint8).tolist(), out32.tolist(), torch.signbit(out32).tolist())


if __name__ == "__main__":
    main()
