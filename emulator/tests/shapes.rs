//! Launch shapes (`tests/kernels/shapes.cu`): 3-D grids and blocks (x fastest), `%laneid` as the
//! linear thread index mod 32 (the PTX ISA: warps are formed from consecutive linear thread
//! ids), block sizes with a partial last warp at every barrier, and grids of hundreds of blocks.
mod common;
use common::*;

#[test]
fn three_dimensional_ids_and_laneid() {
    let (grid, block) = ([3u32, 2, 2], [8u32, 4, 3]); // 96 threads per block: 3 warps
    let per_block = (block[0] * block[1] * block[2]) as usize;
    let total = per_block * (grid[0] * grid[1] * grid[2]) as usize;
    let mut gpu = Gpu::load("shapes");
    let out = gpu.filled(total * 4, u32::MAX);
    gpu.launch("ids", grid, block, &[ptr(out)]);
    let o: Vec<u32> = gpu.download(out, total * 4);
    let mut g = 0usize;
    for bz in 0..grid[2] {
        for by in 0..grid[1] {
            for bx in 0..grid[0] {
                for tz in 0..block[2] {
                    for ty in 0..block[1] {
                        for tx in 0..block[0] {
                            let lin = tx + block[0] * (ty + block[1] * tz);
                            let rec = &o[g * 4..g * 4 + 4];
                            assert_eq!(rec[0], tx | ty << 8 | tz << 16, "tid of record {g}");
                            assert_eq!(rec[1], bx | by << 8 | bz << 16, "ctaid of record {g}");
                            assert_eq!(rec[2], 8 | 4 << 8 | 3 << 16, "ntid of record {g}");
                            assert_eq!(
                                rec[3],
                                (lin % 32) | 3 << 8 | 2 << 16 | 2 << 24,
                                "laneid/nctaid {g}"
                            );
                            g += 1;
                        }
                    }
                }
            }
        }
    }
    // by hand: thread (3, 2, 1) of a block is linear 3 + 8 (2 + 4) = 51, lane 19
    let rec51 = &o[51 * 4..51 * 4 + 4];
    assert_eq!(rec51[0], 3 | 2 << 8 | 1 << 16);
    assert_eq!(rec51[3] & 0xff, 19);
}

fn block_sums(block: u32, grid: u32, n: usize) {
    let x: Vec<i32> = (0..n).map(|i| (i % 13) as i32 - 6).collect();
    let mut gpu = Gpu::load("shapes");
    let px = gpu.upload(&x);
    let out = gpu.filled(2 * grid as usize, i32::MIN);
    gpu.launch(
        "block_sum",
        [grid, 1, 1],
        [block, 1, 1],
        &[ptr(px), ptr(out), int(n as i32)],
    );
    let o: Vec<i32> = gpu.download(out, 2 * grid as usize);
    for b in 0..grid as usize {
        let lo = b * block as usize;
        let want: i32 = x[lo.min(n)..(lo + block as usize).min(n)].iter().sum();
        assert_eq!(o[b], want, "block {b} of {grid} x {block} (thread 0)");
        assert_eq!(
            o[grid as usize + b],
            want,
            "block {b} of {grid} x {block} (last thread)"
        );
    }
}

#[test]
fn block_sum_partial_warps() {
    // 37 threads: one full warp and 5 lanes; 48: a half warp; n not a multiple of the block
    block_sums(37, 5, 170);
    block_sums(48, 3, 130);
    block_sums(1, 4, 4);
}

#[test]
fn block_sum_many_blocks() {
    // 300 blocks: far more than the 4 SMs hold at once
    block_sums(64, 300, 300 * 64 - 11);
}
