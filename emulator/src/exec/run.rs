//! Kernel execution: blocks of warps of 32 lanes, each lane with its own PC, and the checkers.
//!
//! # Scheduling
//! Each warp step picks the smallest PC among the warp's runnable lanes and executes that
//! instruction for every runnable lane at it (lanes at lower PCs always run first, so diverged
//! lanes of structured code reconverge where their paths join). Resident blocks (as many as the
//! occupancy allows on all SMs) run round-robin; within a block each warp runs a time slice of a
//! few hundred steps, then the next warp. So no block runs to completion before the others
//! start, and a cross-block spin-wait makes progress. `nanosleep` ends the warp's slice. With
//! a seed, the block and warp order of each round and the slice lengths are random.
//!
//! # Collectives and barriers
//! A `.sync` collective (`shfl.sync`, `vote.sync`, `bar.warp.sync`, `mma.sync`, `wmma.*.sync`)
//! executes once every lane named by the membermask (all 32 for the `.aligned` matrix ops) is at
//! that same instruction; lanes that arrive early wait. `bar.sync` is per warp: a lane that
//! reaches it waits until all non-exited lanes of its warp are at the same `bar.sync`, then the
//! warp arrives at the block barrier, which completes when all warps with a live lane have
//! arrived (or `count / 32` warps for the two-operand form). synccheck reports: a membermask
//! naming exited or absent lanes, a lane not in its own membermask, a warp whose live lanes all
//! wait but at different collectives/barriers (divergent `bar.sync`), and a block whose warps
//! can no longer make progress (barrier deadlock).
//!
//! # Racecheck model
//! Per shared byte: the last writer (thread, barrier epoch, warp-sync count, PC, atomic or not)
//! and the readers since the last barrier (one thread, or "several" with the warp they came
//! from). Two accesses of different threads to one byte, at least one a write and not both
//! atomic, are a hazard when they happen in the same barrier epoch of the block, unless both
//! threads are in one warp and that warp executed a warp-wide (every live lane participating)
//! `.sync` collective between them. Any completed `bar.sync` of the block starts a new epoch
//! (a named barrier with a thread count is treated as if it synchronised the whole block).
use super::lower::{Addr, AtomOp, AtomTy, MemSpace, Op, Program, ShflMode, Src, VoteMode};
use super::memory::{DeviceMemory, Fault, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW, WINDOW_SIZE};
use super::{CheckerConfig, CudaCode, DeviceConfig, EmuError, EmuResult, LaunchStats};
use crate::ptx::ir::Special;

/// Warp steps of a time slice.
const SLICE: u32 = 256;
const MULTI: u16 = 0xFFFF;

#[derive(Clone, Copy, Default)]
struct RaceCell {
    w_epoch: u32,
    w_wsync: u32,
    w_pc: u32,
    r_epoch: u32,
    r_wsync: u32,
    r_pc: u32,
    w_tid: u16,
    r_tid: u16,
    r_warp: u16,
    w_atomic: bool,
}

struct Warp {
    regs: Vec<u64>,
    pc: [u32; 32],
    valid: u32,
    exited: u32,
    /// Lanes waiting at a collective for the rest of its membermask.
    waiting: u32,
    /// Lanes at a `bar.sync` waiting for the rest of their warp.
    pending: u32,
    /// Lanes expected at the `bar.sync` the warp's first lane reached: every live lane then,
    /// except those whose next instruction is `ret`/`exit` (an early return before a barrier).
    bar_expect: u32,
    /// All runnable lanes are at one PC (cleared whenever lanes may part or rejoin).
    conv: bool,
    /// The whole warp has arrived at a block barrier.
    blocked: bool,
    bar_id: usize,
    /// Count of warp-wide `.sync` collectives executed (racecheck).
    wsync: u32,
    index: u32,
    /// Per-lane local memory, `local_bytes` per lane.
    local: Vec<u8>,
    local_init: Vec<u8>,
}

impl Warp {
    fn live(&self) -> u32 {
        self.valid & !self.exited
    }
    fn runnable(&self) -> u32 {
        if self.blocked {
            0
        } else {
            self.valid & !self.exited & !self.waiting & !self.pending
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Bar {
    arrived: u32,
    /// Expected warps for a barrier with a thread count.
    count: Option<u32>,
    /// PC of the first warp's arrival (for reports).
    pc: u32,
}

struct Block {
    ctaid: [u32; 3],
    serial: u32,
    smid: u32,
    warps: Vec<Warp>,
    shared: Vec<u8>,
    /// Serial of the block that last wrote each byte (initcheck: shared starts unwritten).
    sh_init: Vec<u32>,
    race: Vec<RaceCell>,
    bars: [Bar; 16],
    epoch: u32,
    live_warps: u32,
    /// An uninitialised shared read (with the epoch it happened in), reported unless a race
    /// on the same bytes is found first in that epoch (a read racing with a later write of
    /// another thread is a race, not an initcheck report).
    pending_init: Option<(u32, EmuError)>,
}

struct Pools {
    shared: Vec<(Vec<u8>, Vec<u32>, Vec<RaceCell>)>,
    /// Register files of finished warps.
    regs: Vec<Vec<u64>>,
}

#[inline]
fn bits(mut m: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(l)
        }
    })
}

fn lanes_str(m: u32) -> String {
    format!("{:#010x}", m)
}

/// Simple xorshift generator for the seeded schedule.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// A failed access: which checker, the CUDA code, and what happened.
struct AccessErr {
    checker: &'static str,
    code: CudaCode,
    detail: String,
}

fn fault_err(f: Fault, addr: u64, size: usize, what: &str, space: &str) -> AccessErr {
    let (checker, code) = match f {
        Fault::Uninitialized { .. } => ("initcheck", CudaCode::IllegalAddress),
        Fault::Misaligned => ("memcheck", CudaCode::MisalignedAddress),
        _ => ("memcheck", CudaCode::IllegalAddress),
    };
    AccessErr {
        checker,
        code,
        detail: format!(
            "invalid {} {} of {} bytes at address {:#x}: {}",
            space,
            what,
            size,
            addr,
            f.describe(addr)
        ),
    }
}

/// Everything one launch needs.
pub struct Launch<'a> {
    pub prog: &'a Program,
    pub mem: &'a mut DeviceMemory,
    pub ck: CheckerConfig,
    pub params: Vec<u8>,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_total: usize,
    pub dyn_shared: u32,
    pub config: &'a DeviceConfig,
    pub seed: Option<u64>,
    pub hang_limit: u64,
    pub resident_max: u32,
    stats: LaunchStats,
    /// The profile counters, when asked for (`None`: one branch per instruction and access).
    pub profile: Option<Box<super::profile::Profile>>,
    since_progress: u64,
    epoch_counter: u32,
    serial_counter: u32,
    clock: u64,
}

impl<'a> Launch<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        prog: &'a Program,
        mem: &'a mut DeviceMemory,
        ck: CheckerConfig,
        params: Vec<u8>,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        config: &'a DeviceConfig,
        seed: Option<u64>,
        hang_limit: u64,
        resident_max: u32,
    ) -> Self {
        let shared_total =
            (prog.dyn_shared_offset + u64::from(dyn_shared)).max(prog.shared_bytes) as usize;
        Launch {
            prog,
            mem,
            ck,
            params,
            grid,
            block,
            shared_total,
            dyn_shared,
            config,
            seed,
            hang_limit,
            resident_max,
            stats: LaunchStats::default(),
            profile: None,
            since_progress: 0,
            epoch_counter: 1,
            serial_counter: 0,
            clock: 0,
        }
    }

    fn threads(&self) -> u32 {
        self.block[0] * self.block[1] * self.block[2]
    }

    fn tid3(&self, lin: u32) -> [u32; 3] {
        let bx = self.block[0];
        let by = self.block[1];
        [lin % bx, (lin / bx) % by, lin / (bx * by)]
    }

    fn new_epoch(&mut self) -> u32 {
        self.epoch_counter = self.epoch_counter.wrapping_add(1).max(1);
        self.epoch_counter
    }

    /// A report: printed to stderr and returned as the launch's error.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        checker: &str,
        code: CudaCode,
        blk: &Block,
        warp: u32,
        lane: usize,
        pc: usize,
        detail: &str,
    ) -> EmuError {
        let e = self.quiet_report(checker, code, blk, warp, lane, pc, detail);
        eprintln!("========= emulator {}", e.message);
        e
    }

    /// A report kept for later (not printed yet).
    #[allow(clippy::too_many_arguments)]
    fn quiet_report(
        &self,
        checker: &str,
        code: CudaCode,
        blk: &Block,
        warp: u32,
        lane: usize,
        pc: usize,
        detail: &str,
    ) -> EmuError {
        let t = self.tid3(warp * 32 + lane as u32);
        EmuError::new(
            code,
            format!(
                "{}: {} in kernel {} block ({},{},{}) thread ({},{},{}) at {}",
                checker,
                detail,
                self.prog.name,
                blk.ctaid[0],
                blk.ctaid[1],
                blk.ctaid[2],
                t[0],
                t[1],
                t[2],
                self.prog.location(pc)
            ),
        )
    }

    fn new_block(&mut self, lin: u32, pools: &mut Pools) -> Block {
        let gx = self.grid[0];
        let gy = self.grid[1];
        let ctaid = [lin % gx, (lin / gx) % gy, lin / (gx * gy)];
        let nthreads = self.threads();
        let nwarps = nthreads.div_ceil(32);
        let nregs = self.prog.nregs;
        let lb = self.prog.local_bytes as usize;
        let warps = (0..nwarps)
            .map(|w| {
                let n = (nthreads - w * 32).min(32);
                Warp {
                    regs: match pools.regs.pop() {
                        Some(mut r) if r.len() == nregs * 32 => {
                            r.fill(0);
                            r
                        }
                        _ => vec![0; nregs * 32],
                    },
                    pc: [0; 32],
                    valid: if n == 32 { u32::MAX } else { (1u32 << n) - 1 },
                    exited: 0,
                    waiting: 0,
                    pending: 0,
                    bar_expect: 0,
                    conv: false,
                    blocked: false,
                    bar_id: 0,
                    wsync: 0,
                    index: w,
                    local: vec![0; lb * 32],
                    local_init: vec![0; lb * 32],
                }
            })
            .collect();
        let (mut shared, mut sh_init, mut race) = pools.shared.pop().unwrap_or_default();
        let st = self.shared_total;
        if shared.len() != st {
            shared = vec![0; st];
            sh_init = vec![0; st];
            race = if self.ck.racecheck {
                vec![RaceCell::default(); st]
            } else {
                Vec::new()
            };
        }
        self.serial_counter += 1;
        let epoch = self.new_epoch();
        Block {
            ctaid,
            serial: self.serial_counter,
            smid: lin % self.config.sm_count.max(1),
            warps,
            shared,
            sh_init,
            race,
            bars: [Bar::default(); 16],
            epoch,
            live_warps: nwarps,
            pending_init: None,
        }
    }

    /// Runs the launch to completion.
    /// Runs the launch; the profile counters come back when [`Self::profile`] was set.
    pub fn run(
        mut self,
    ) -> (
        EmuResult<LaunchStats>,
        Option<super::profile::ProfileCounters>,
    ) {
        let r = self.run_blocks();
        (r, self.profile.take().map(|p| p.finish()))
    }

    fn run_blocks(&mut self) -> EmuResult<LaunchStats> {
        let total = u64::from(self.grid[0]) * u64::from(self.grid[1]) * u64::from(self.grid[2]);
        let total = u32::try_from(total)
            .map_err(|_| EmuError::new(CudaCode::InvalidValue, "grid too large"))?;
        let resident_max = self.resident_max.clamp(1, total.max(1));
        let mut rng = Rng(self.seed.unwrap_or(0) ^ 0x9E37_79B9_7F4A_7C15 | 1);
        let mut pools = Pools {
            shared: Vec::new(),
            regs: Vec::new(),
        };
        let mut resident: Vec<Block> = Vec::new();
        let mut next = 0u32;
        let mut order_b: Vec<usize> = Vec::new();
        let mut order_w: Vec<usize> = Vec::new();
        loop {
            while (resident.len() as u32) < resident_max && next < total {
                let b = self.new_block(next, &mut pools);
                resident.push(b);
                next += 1;
            }
            if resident.is_empty() {
                break;
            }
            let mut progress = false;
            order_b.clear();
            order_b.extend(0..resident.len());
            if self.seed.is_some() {
                rng.shuffle(&mut order_b);
            }
            for &bi in &order_b {
                let blk = &mut resident[bi];
                order_w.clear();
                order_w.extend(0..blk.warps.len());
                if self.seed.is_some() {
                    rng.shuffle(&mut order_w);
                }
                for &wi in &order_w {
                    let slice = if self.seed.is_some() {
                        1 + rng.below(2 * SLICE as u64) as u32
                    } else {
                        SLICE
                    };
                    if self.run_warp(blk, wi, slice)? {
                        progress = true;
                    }
                    if let Some((ep, _)) = &blk.pending_init {
                        if *ep != blk.epoch || blk.live_warps == 0 {
                            let (_, e) = blk.pending_init.take().expect("checked");
                            eprintln!("========= emulator {}", e.message);
                            return Err(e);
                        }
                    }
                }
            }
            let mut i = 0;
            while i < resident.len() {
                if resident[i].live_warps == 0 {
                    let b = resident.swap_remove(i);
                    pools.shared.push((b.shared, b.sh_init, b.race));
                    pools.regs.extend(b.warps.into_iter().map(|w| w.regs));
                    self.since_progress = 0;
                    progress = true;
                } else {
                    i += 1;
                }
            }
            if !progress {
                return Err(self.deadlock(&resident));
            }
            if self.since_progress > self.hang_limit {
                let blk = &resident[0];
                let w = blk.warps.iter().find(|w| w.live() != 0);
                let (wi, lane, pc) = w
                    .map(|w| {
                        let l = w.live().trailing_zeros() as usize;
                        (w.index, l, w.pc[l] as usize)
                    })
                    .unwrap_or((0, 0, 0));
                return Err(self.report(
                    "hang",
                    CudaCode::LaunchFailed,
                    blk,
                    wi,
                    lane,
                    pc,
                    &format!(
                        "no global store, atomic, barrier or block completion in {} warp steps \
                         (a spin-wait that never ends?); {} blocks resident, {} not started",
                        self.since_progress,
                        resident.len(),
                        total - next
                    ),
                ));
            }
        }
        Ok(self.stats)
    }

    fn deadlock(&self, resident: &[Block]) -> EmuError {
        let mut parts = Vec::new();
        for blk in resident.iter().take(4) {
            let mut ws = Vec::new();
            for w in &blk.warps {
                let l = w.live();
                if l == 0 {
                    ws.push(format!("warp {} exited", w.index));
                } else {
                    let lane = l.trailing_zeros() as usize;
                    ws.push(format!(
                        "warp {} {} at {}",
                        w.index,
                        if w.blocked {
                            format!("waits at barrier {}", w.bar_id)
                        } else {
                            "stalled".into()
                        },
                        self.prog.location(w.pc[lane] as usize)
                    ));
                }
            }
            parts.push(format!(
                "block ({},{},{}): {}",
                blk.ctaid[0],
                blk.ctaid[1],
                blk.ctaid[2],
                ws.join(", ")
            ));
        }
        let blk = &resident[0];
        let w = blk.warps.iter().find(|w| w.live() != 0);
        let (wi, lane, pc) = w
            .map(|w| {
                let l = w.live().trailing_zeros() as usize;
                (w.index, l, w.pc[l] as usize)
            })
            .unwrap_or((0, 0, 0));
        self.report(
            "synccheck",
            CudaCode::LaunchFailed,
            blk,
            wi,
            lane,
            pc,
            &format!(
                "deadlock: no warp can make progress (barrier never completes): {}",
                parts.join("; ")
            ),
        )
    }

    /// Runs up to `budget` steps of warp `wi`; whether anything happened.
    fn run_warp(&mut self, blk: &mut Block, wi: usize, budget: u32) -> EmuResult<bool> {
        let mut did = false;
        for _ in 0..budget {
            match self.step(blk, wi)? {
                Step::Continue => did = true,
                Step::Yield => return Ok(true),
                Step::Stop(changed) => return Ok(did || changed),
            }
        }
        Ok(did)
    }

    /// Releases barrier `id` of the block when enough warps have arrived.
    fn check_barrier(&mut self, blk: &mut Block, id: usize) {
        let b = blk.bars[id];
        if b.arrived == 0 {
            return;
        }
        let expected = b.count.unwrap_or(blk.live_warps);
        if b.arrived >= expected {
            for w in blk.warps.iter_mut() {
                if w.blocked && w.bar_id == id {
                    w.blocked = false;
                    w.conv = false;
                    for l in bits(w.pending) {
                        w.pc[l] += 1;
                    }
                    w.pending = 0;
                }
            }
            blk.bars[id] = Bar::default();
            blk.epoch = self.new_epoch();
            self.since_progress = 0;
        }
    }

    /// A warp with no runnable lane: arrive at a barrier, or report.
    fn stall(&mut self, blk: &mut Block, wi: usize) -> EmuResult<Step> {
        let w = &blk.warps[wi];
        let live = w.live();
        if live == 0 || w.blocked {
            return Ok(Step::Stop(false));
        }
        if w.waiting != 0 {
            let l = w.waiting.trailing_zeros() as usize;
            let pc = w.pc[l] as usize;
            // Group the other lanes by where they are.
            let mut groups: Vec<(u32, u32, bool)> = Vec::new();
            for o in bits(live) {
                let opc = w.pc[o];
                let waits = w.waiting & (1 << o) != 0;
                if waits && opc as usize == pc {
                    continue;
                }
                match groups.iter_mut().find(|g| g.0 == opc && g.2 == waits) {
                    Some(g) => g.1 |= 1 << o,
                    None => groups.push((opc, 1 << o, waits)),
                }
            }
            let where_: Vec<String> = groups
                .iter()
                .map(|&(opc, lanes, waits)| {
                    format!(
                        "lanes {} {} {}",
                        lanes_str(lanes),
                        if waits {
                            "wait at another collective at"
                        } else {
                            "wait at bar.sync at"
                        },
                        self.prog.location(opc as usize)
                    )
                })
                .collect();
            let e =
                self.report(
                    "synccheck",
                    CudaCode::LaunchFailed,
                    blk,
                    w.index,
                    l,
                    pc,
                    &format!(
                    "collective never completes: lanes {} wait here for lanes that cannot arrive \
                     (exited lanes {}; {})",
                    lanes_str(w.waiting),
                    lanes_str(w.exited & w.valid),
                    if where_.is_empty() { "none elsewhere".into() } else { where_.join(", ") }
                ),
                );
            return Err(e);
        }
        // All live lanes are pending at bar.sync: the same one?
        let l0 = live.trailing_zeros() as usize;
        let pc = w.pc[l0];
        if let Some(o) = bits(live).find(|&o| w.pc[o] != pc) {
            let e = self.report(
                "synccheck",
                CudaCode::LaunchFailed,
                blk,
                w.index,
                l0,
                pc as usize,
                &format!(
                    "divergent bar.sync: lanes of one warp wait at different barriers (lane {} \
                     here, lane {} at {})",
                    l0,
                    o,
                    self.prog.location(w.pc[o] as usize)
                ),
            );
            return Err(e);
        }
        if self.ck.synccheck && w.bar_expect & w.exited != 0 {
            let gone = w.bar_expect & w.exited;
            let e = self.report(
                "synccheck",
                CudaCode::LaunchFailed,
                blk,
                w.index,
                l0,
                pc as usize,
                &format!(
                    "divergent bar.sync: lanes {} of the warp were elsewhere when lanes {} \
                     reached this barrier, and exited without reaching it",
                    lanes_str(gone),
                    lanes_str(w.pending)
                ),
            );
            return Err(e);
        }
        // Arrive.
        let inst = &self.prog.insts[pc as usize];
        let Op::Bar { id, count, .. } = &inst.op else {
            return Ok(Step::Stop(false));
        };
        let idv = self.src_val(w, *id, l0) as usize;
        let cnt = count.map(|c| self.src_val(w, c, l0));
        if idv >= 16 {
            return Err(self.report(
                "synccheck",
                CudaCode::IllegalInstruction,
                blk,
                w.index,
                l0,
                pc as usize,
                &format!("barrier id {} out of range 0..15", idv),
            ));
        }
        let cw = match cnt {
            Some(c) if c % 32 != 0 || c == 0 => {
                return Err(self.report(
                    "synccheck",
                    CudaCode::IllegalInstruction,
                    blk,
                    w.index,
                    l0,
                    pc as usize,
                    &format!(
                        "bar.sync thread count {} is not a positive multiple of 32",
                        c
                    ),
                ))
            }
            Some(c) => Some((c / 32) as u32),
            None => None,
        };
        let b = &mut blk.bars[idv];
        if b.arrived > 0 && b.count != cw {
            let e = self.report(
                "synccheck",
                CudaCode::LaunchFailed,
                blk,
                blk.warps[wi].index,
                l0,
                pc as usize,
                "bar.sync: warps arrive at one barrier with different thread counts",
            );
            return Err(e);
        }
        if b.arrived == 0 {
            b.pc = pc;
        }
        b.count = cw;
        b.arrived += 1;
        let w = &mut blk.warps[wi];
        w.blocked = true;
        w.bar_id = idv;
        self.check_barrier(blk, idv);
        Ok(Step::Stop(true))
    }

    #[inline]
    fn src_val(&self, w: &Warp, s: Src, lane: usize) -> u64 {
        match s {
            Src::Reg(r) => w.regs[r as usize * 32 + lane],
            Src::NotReg(r) => w.regs[r as usize * 32 + lane] ^ 1,
            Src::Imm(v) => v,
        }
    }

    /// One step of warp `wi`.
    fn step(&mut self, blk: &mut Block, wi: usize) -> EmuResult<Step> {
        if self.profile.is_none() {
            return self.step_inner(blk, wi);
        }
        let r = self.step_inner(blk, wi);
        if let Some(p) = self.profile.as_deref_mut() {
            if !p.pending.is_empty() {
                let pc = p.pending_pc as usize;
                let inst = &self.prog.insts[pc];
                p.flush(matches!(inst.op, Op::Matrix(_)), inst.cache);
            }
        }
        r
    }

    fn step_inner(&mut self, blk: &mut Block, wi: usize) -> EmuResult<Step> {
        let run = blk.warps[wi].runnable();
        if run == 0 {
            return self.stall(blk, wi);
        }
        let prog = self.prog;
        let (pc, m) = {
            let w = &mut blk.warps[wi];
            if w.conv {
                (w.pc[run.trailing_zeros() as usize], run)
            } else {
                let mut pc = u32::MAX;
                for l in bits(run) {
                    pc = pc.min(w.pc[l]);
                }
                let mut m = 0u32;
                for l in bits(run) {
                    if w.pc[l] == pc {
                        m |= 1 << l;
                    }
                }
                w.conv = m == run;
                (pc, m)
            }
        };
        let pcu = pc as usize;
        let Some(inst) = prog.insts.get(pcu) else {
            // Fell off the end of the kernel: like `ret`.
            return Ok(self.exit_lanes(blk, wi, m));
        };
        self.stats.warp_instructions += 1;
        self.since_progress += 1;
        if let Some(p) = self.profile.as_deref_mut() {
            p.inst(inst.class);
            match inst.op {
                Op::Bar { .. } => p.c.barriers += 1,
                Op::Nanosleep => p.c.nanosleeps += 1,
                _ => {}
            }
        }
        let mut exec = m;
        if let Some((p, neg)) = inst.guard {
            let w = &blk.warps[wi];
            for l in bits(m) {
                if (w.regs[p as usize * 32 + l] != 0) == neg {
                    exec &= !(1 << l);
                }
            }
        }
        match &inst.op {
            Op::Alu(a) => {
                let w = &mut blk.warps[wi];
                let ns = a.srcs.len();
                let nd = a.dsts.len();
                if exec.count_ones() >= 12 {
                    // The whole warp at once (ALU ops are pure: inactive lanes' results are
                    // computed and dropped).
                    let mut sv = [[0u64; 32]; 8];
                    let mut dv = [[0u64; 32]; 8];
                    for (i, s) in a.srcs.iter().enumerate() {
                        match *s {
                            Src::Reg(r) => sv[i]
                                .copy_from_slice(&w.regs[r as usize * 32..r as usize * 32 + 32]),
                            Src::NotReg(r) => {
                                for (l, v) in sv[i].iter_mut().enumerate() {
                                    *v = w.regs[r as usize * 32 + l] ^ 1;
                                }
                            }
                            Src::Imm(v) => sv[i] = [v; 32],
                        }
                    }
                    a.eval_warp(&mut sv[..ns], &mut dv[..nd]);
                    for (i, d) in a.dsts.iter().enumerate() {
                        if let Some(d) = *d {
                            let mask = prog.reg_mask[d as usize];
                            let row = &mut w.regs[d as usize * 32..d as usize * 32 + 32];
                            if exec == u32::MAX {
                                for (r, v) in row.iter_mut().zip(dv[i].iter()) {
                                    *r = *v & mask;
                                }
                            } else {
                                for l in bits(exec) {
                                    row[l] = dv[i][l] & mask;
                                }
                            }
                        }
                    }
                } else {
                    let mut sv = [0u64; 8];
                    let mut dv = [0u64; 8];
                    for l in bits(exec) {
                        for (i, s) in a.srcs.iter().enumerate() {
                            sv[i] = self.src_val(w, *s, l);
                        }
                        a.eval(&sv[..ns], &mut dv[..nd]);
                        for (i, d) in a.dsts.iter().enumerate() {
                            if let Some(d) = *d {
                                w.regs[d as usize * 32 + l] = dv[i] & prog.reg_mask[d as usize];
                            }
                        }
                    }
                }
                advance(w, m);
            }
            Op::Bra { target } => {
                let w = &mut blk.warps[wi];
                if exec != 0 && exec != m {
                    w.conv = false;
                }
                for l in bits(m) {
                    w.pc[l] = if exec & (1 << l) != 0 {
                        *target
                    } else {
                        pc + 1
                    };
                }
            }
            Op::Special { dst, sp } => {
                let d = *dst as usize;
                let mask = prog.reg_mask[d];
                for l in bits(exec) {
                    let v = self.special(blk, wi, l, *sp);
                    blk.warps[wi].regs[d * 32 + l] = v & mask;
                }
                advance(&mut blk.warps[wi], m);
            }
            Op::Ld {
                space,
                addr,
                size,
                signed,
                dsts,
            } => {
                let size = *size as usize;
                let total = size * dsts.len();
                for l in bits(exec) {
                    let a = self.addr_val(&blk.warps[wi], addr, l);
                    let mut buf = [0u8; 64];
                    self.access_reported(
                        blk,
                        wi,
                        l,
                        pcu,
                        *space,
                        a,
                        total,
                        &mut buf,
                        AccessKind::Read,
                    )?;
                    let w = &mut blk.warps[wi];
                    for (i, d) in dsts.iter().enumerate() {
                        let Some(d) = d else { continue };
                        let mut v = le_read(&buf[i * size..(i + 1) * size]);
                        if *signed && size < 8 {
                            let sh = 64 - 8 * size as u32;
                            v = (((v << sh) as i64) >> sh) as u64;
                        }
                        w.regs[*d as usize * 32 + l] = v & prog.reg_mask[*d as usize];
                    }
                }
                advance(&mut blk.warps[wi], m);
            }
            Op::St {
                space,
                addr,
                size,
                srcs,
            } => {
                let size = *size as usize;
                let total = size * srcs.len();
                for l in bits(exec) {
                    let a = self.addr_val(&blk.warps[wi], addr, l);
                    let mut buf = [0u8; 64];
                    {
                        let w = &blk.warps[wi];
                        for (i, s) in srcs.iter().enumerate() {
                            let v = self.src_val(w, *s, l);
                            le_write(v, &mut buf[i * size..(i + 1) * size]);
                        }
                    }
                    self.access_reported(
                        blk,
                        wi,
                        l,
                        pcu,
                        *space,
                        a,
                        total,
                        &mut buf,
                        AccessKind::Write,
                    )?;
                }
                advance(&mut blk.warps[wi], m);
            }
            Op::Atom {
                space,
                addr,
                op,
                ty,
                size,
                dst,
                b,
                c,
            } => {
                let size = *size as usize;
                for l in bits(exec) {
                    let a = self.addr_val(&blk.warps[wi], addr, l);
                    let bv = self.src_val(&blk.warps[wi], *b, l);
                    let cv = c.map(|c| self.src_val(&blk.warps[wi], c, l)).unwrap_or(0);
                    let mut buf = [0u8; 64];
                    self.access_reported(
                        blk,
                        wi,
                        l,
                        pcu,
                        *space,
                        a,
                        size,
                        &mut buf,
                        AccessKind::Atomic(*op, *ty, bv, cv),
                    )?;
                    if let Some(d) = dst {
                        let v = le_read(&buf[..size]);
                        blk.warps[wi].regs[*d as usize * 32 + l] = v & prog.reg_mask[*d as usize];
                    }
                }
                advance(&mut blk.warps[wi], m);
            }
            Op::Cvta {
                dst,
                src,
                space,
                to,
            } => {
                let w = &mut blk.warps[wi];
                let d = *dst as usize;
                let window = match space {
                    MemSpace::Shared => SHARED_WINDOW,
                    MemSpace::Local => LOCAL_WINDOW,
                    _ => 0,
                };
                for l in bits(exec) {
                    let v = self.src_val(w, *src, l);
                    let r = if *to {
                        v.wrapping_sub(window)
                    } else {
                        v.wrapping_add(window)
                    };
                    w.regs[d * 32 + l] = r & prog.reg_mask[d];
                }
                advance(w, m);
            }
            Op::Exit => {
                let w = &mut blk.warps[wi];
                advance(w, m & !exec);
                return Ok(self.exit_lanes(blk, wi, exec));
            }
            Op::Trap => {
                if exec != 0 {
                    let l = exec.trailing_zeros() as usize;
                    return Err(self.report(
                        "trap",
                        CudaCode::LaunchFailed,
                        blk,
                        blk.warps[wi].index,
                        l,
                        pcu,
                        "the kernel executed `trap`",
                    ));
                }
                advance(&mut blk.warps[wi], m);
            }
            Op::Nop => advance(&mut blk.warps[wi], m),
            Op::Nanosleep => {
                advance(&mut blk.warps[wi], m);
                return Ok(Step::Yield);
            }
            Op::Bar { arrive, id, count } => {
                let w = &mut blk.warps[wi];
                advance(w, m & !exec);
                if *arrive {
                    if exec != 0 {
                        let l = exec.trailing_zeros() as usize;
                        let idv = (self.src_val(&blk.warps[wi], *id, l) & 15) as usize;
                        let cnt = count.map(|c| self.src_val(&blk.warps[wi], c, l) / 32);
                        blk.bars[idv].arrived += 1;
                        blk.bars[idv].count = cnt.map(|c| c as u32);
                        advance(&mut blk.warps[wi], exec);
                        self.check_barrier(blk, idv);
                    }
                } else {
                    if w.pending == 0 && exec != 0 {
                        let mut expect = 0u32;
                        for l in bits(w.live()) {
                            let at_exit = matches!(
                                prog.insts.get(w.pc[l] as usize).map(|i| &i.op),
                                Some(Op::Exit)
                            );
                            if !at_exit {
                                expect |= 1 << l;
                            }
                        }
                        w.bar_expect = expect | exec;
                    }
                    w.pending |= exec;
                    w.conv = false;
                }
            }
            Op::ActiveMask { dst } => {
                let w = &mut blk.warps[wi];
                for l in bits(exec) {
                    w.regs[*dst as usize * 32 + l] = u64::from(m);
                }
                advance(w, m);
            }
            Op::WarpSync { .. } | Op::Shfl { .. } | Op::Vote { .. } | Op::Matrix(_) => {
                return self.collective(blk, wi, pc, m, exec);
            }
        }
        Ok(Step::Continue)
    }

    fn exit_lanes(&mut self, blk: &mut Block, wi: usize, lanes: u32) -> Step {
        let w = &mut blk.warps[wi];
        let was_live = w.live() != 0;
        w.exited |= lanes;
        if was_live && w.live() == 0 {
            blk.live_warps -= 1;
            for id in 0..16 {
                self.check_barrier(blk, id);
            }
            return Step::Stop(true);
        }
        Step::Continue
    }

    fn special(&self, blk: &Block, wi: usize, lane: usize, sp: Special) -> u64 {
        let w = &blk.warps[wi];
        let lin = w.index * 32 + lane as u32;
        let t = self.tid3(lin);
        let lane32 = lane as u32;
        u64::from(match sp {
            Special::Tid(d) => t[d as usize % 3],
            Special::Ntid(d) => self.block[d as usize % 3],
            Special::Ctaid(d) => blk.ctaid[d as usize % 3],
            Special::Nctaid(d) => self.grid[d as usize % 3],
            Special::LaneId => lane32,
            Special::WarpId => w.index,
            Special::NWarpId => self.threads().div_ceil(32),
            Special::SmId => blk.smid,
            Special::NSmId => self.config.sm_count,
            Special::LaneMaskEq => 1u32 << lane32,
            Special::LaneMaskLe => ((1u64 << (lane32 + 1)) - 1) as u32,
            Special::LaneMaskLt => ((1u64 << lane32) - 1) as u32,
            Special::LaneMaskGe => !(((1u64 << lane32) - 1) as u32),
            Special::LaneMaskGt => !(((1u64 << (lane32 + 1)) - 1) as u32),
            Special::Clock => (self.stats.warp_instructions + self.clock) as u32,
            Special::Clock64 | Special::GlobalTimer => {
                return self.stats.warp_instructions + self.clock;
            }
            Special::DynamicSmemSize => self.dyn_shared,
            Special::TotalSmemSize => self.shared_total as u32,
        })
    }

    #[inline]
    fn addr_val(&self, w: &Warp, a: &Addr, lane: usize) -> u64 {
        match a.base {
            Some(r) => w.regs[r as usize * 32 + lane].wrapping_add(a.offset),
            None => a.offset,
        }
    }

    /// [`Self::access`], with a failure turned into the launch's report (printed, returned).
    #[allow(clippy::too_many_arguments)]
    fn access_reported(
        &mut self,
        blk: &mut Block,
        wi: usize,
        lane: usize,
        pc: usize,
        space: MemSpace,
        addr: u64,
        size: usize,
        buf: &mut [u8],
        kind: AccessKind,
    ) -> EmuResult<()> {
        self.access(blk, wi, lane, pc, space, addr, size, buf, kind)
            .map_err(|e| {
                self.report(
                    e.checker,
                    e.code,
                    blk,
                    blk.warps[wi].index,
                    lane,
                    pc,
                    &e.detail,
                )
            })
    }

    /// One lane's access of `size` bytes at `addr` in `space`: reads into / writes from `buf`
    /// (an atomic leaves the old value in `buf`).
    #[allow(clippy::too_many_arguments)]
    fn access(
        &mut self,
        blk: &mut Block,
        wi: usize,
        lane: usize,
        pc: usize,
        space: MemSpace,
        addr: u64,
        size: usize,
        buf: &mut [u8],
        kind: AccessKind,
    ) -> Result<(), AccessErr> {
        let what = match kind {
            AccessKind::Read => "read",
            AccessKind::Write => "write",
            AccessKind::Atomic(..) => "atomic",
        };
        // Resolve generic addresses to a space.
        let (sp, a) = match space {
            MemSpace::Generic => {
                if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SIZE).contains(&addr) {
                    (MemSpace::Shared, addr - SHARED_WINDOW)
                } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SIZE).contains(&addr) {
                    (MemSpace::Local, addr - LOCAL_WINDOW)
                } else if (PARAM_WINDOW..PARAM_WINDOW + WINDOW_SIZE).contains(&addr) {
                    (MemSpace::Param, addr)
                } else {
                    (MemSpace::Global, addr)
                }
            }
            s => (s, addr),
        };
        let align = match kind {
            AccessKind::Read | AccessKind::Write => size.min(16),
            AccessKind::Atomic(..) => size,
        };
        // Vector accesses must be aligned to the whole vector; sizes are powers of two.
        if self.ck.memcheck && align.is_power_of_two() && a % align as u64 != 0 {
            return Err(fault_err(Fault::Misaligned, addr, size, what, space.name()));
        }
        if let Some(p) = self.profile.as_deref_mut() {
            if matches!(sp, MemSpace::Global | MemSpace::Shared | MemSpace::Local) {
                p.pending_pc = pc as u32;
                p.pending.push(super::profile::Access {
                    lane: lane as u8,
                    space: sp,
                    addr: a,
                    size: size as u32,
                    dir: match kind {
                        AccessKind::Read => super::profile::Dir::Read,
                        AccessKind::Write => super::profile::Dir::Write,
                        AccessKind::Atomic(..) => super::profile::Dir::Atomic,
                    },
                });
            }
        }
        match sp {
            MemSpace::Global | MemSpace::Const => {
                let r = match kind {
                    AccessKind::Read => self.mem.load(a, size, self.ck.initcheck, buf),
                    AccessKind::Write => {
                        self.since_progress = 0;
                        self.mem.store(a, &buf[..size])
                    }
                    AccessKind::Atomic(op, ty, b, c) => {
                        self.since_progress = 0;
                        self.mem.rmw(a, size, self.ck.initcheck).map(|cell| {
                            atomic(cell, op, ty, b, c, buf);
                        })
                    }
                };
                r.map_err(|f| fault_err(f, addr, size, what, sp.name()))
            }
            MemSpace::Param => {
                let off = a.wrapping_sub(PARAM_WINDOW);
                if !matches!(kind, AccessKind::Read) {
                    return Err(fault_err(Fault::ReadOnly, addr, size, what, "param"));
                }
                if off
                    .checked_add(size as u64)
                    .is_none_or(|e| e > self.params.len() as u64)
                {
                    return Err(AccessErr {
                        checker: "memcheck",
                        code: CudaCode::IllegalAddress,
                        detail: format!(
                            "invalid param read of {} bytes at offset {} (the kernel's parameters are {} bytes)",
                            size,
                            off as i64,
                            self.params.len()
                        ),
                    });
                }
                let o = off as usize;
                buf[..size].copy_from_slice(&self.params[o..o + size]);
                Ok(())
            }
            MemSpace::Local => {
                let lb = self.prog.local_bytes;
                if a.checked_add(size as u64).is_none_or(|e| e > lb) {
                    return Err(AccessErr {
                        checker: "memcheck",
                        code: CudaCode::IllegalAddress,
                        detail: format!(
                            "invalid local {} of {} bytes at local offset {:#x} (the thread has {} bytes of local memory)",
                            what, size, a, lb
                        ),
                    });
                }
                let w = &mut blk.warps[wi];
                let o = lane * lb as usize + a as usize;
                match kind {
                    AccessKind::Read => {
                        if self.ck.initcheck {
                            if let Some(k) = w.local_init[o..o + size].iter().position(|&b| b == 0)
                            {
                                return Err(fault_err(
                                    Fault::Uninitialized {
                                        byte: addr + k as u64,
                                    },
                                    addr,
                                    size,
                                    what,
                                    "local",
                                ));
                            }
                        }
                        buf[..size].copy_from_slice(&w.local[o..o + size]);
                    }
                    AccessKind::Write => {
                        w.local[o..o + size].copy_from_slice(&buf[..size]);
                        w.local_init[o..o + size].fill(1);
                    }
                    AccessKind::Atomic(..) => {
                        return Err(AccessErr {
                            checker: "memcheck",
                            code: CudaCode::InvalidAddressSpace,
                            detail: format!("atomic on local memory at {:#x}", addr),
                        })
                    }
                }
                Ok(())
            }
            MemSpace::Shared => {
                let len = blk.shared.len() as u64;
                if a.checked_add(size as u64).is_none_or(|e| e > len) {
                    return Err(AccessErr {
                        checker: "memcheck",
                        code: CudaCode::IllegalAddress,
                        detail: format!(
                            "invalid shared {} of {} bytes at shared address {:#x}: out of bounds of the block's {} bytes of shared memory",
                            what, size, a, len
                        ),
                    });
                }
                let o = a as usize;
                if self.ck.initcheck && !matches!(kind, AccessKind::Write) {
                    if let Some(k) = blk.sh_init[o..o + size]
                        .iter()
                        .position(|&s| s != blk.serial)
                    {
                        let e = AccessErr {
                            checker: "initcheck",
                            code: CudaCode::IllegalAddress,
                            detail: format!(
                                "uninitialized shared {} of {} bytes at shared address {:#x}: byte {:#x} was never written by this block",
                                what, size, a, a + k as u64
                            ),
                        };
                        if !self.ck.racecheck {
                            return Err(e);
                        }
                        if blk.pending_init.is_none() {
                            let widx = blk.warps[wi].index;
                            let r = self
                                .quiet_report(e.checker, e.code, blk, widx, lane, pc, &e.detail);
                            blk.pending_init = Some((blk.epoch, r));
                        }
                    }
                }
                if self.ck.racecheck {
                    self.race(blk, wi, lane, pc, o, size, &kind)?;
                }
                match kind {
                    AccessKind::Read => buf[..size].copy_from_slice(&blk.shared[o..o + size]),
                    AccessKind::Write => {
                        blk.shared[o..o + size].copy_from_slice(&buf[..size]);
                        blk.sh_init[o..o + size].fill(blk.serial);
                    }
                    AccessKind::Atomic(op, ty, b, c) => {
                        atomic(&mut blk.shared[o..o + size], op, ty, b, c, buf);
                        blk.sh_init[o..o + size].fill(blk.serial);
                    }
                }
                Ok(())
            }
            MemSpace::Generic => unreachable_generic(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn race(
        &self,
        blk: &mut Block,
        wi: usize,
        lane: usize,
        pc: usize,
        o: usize,
        size: usize,
        kind: &AccessKind,
    ) -> Result<(), AccessErr> {
        let w = &blk.warps[wi];
        let tid = (w.index * 32 + lane as u32) as u16;
        let wsync = w.wsync;
        let widx = w.index as u16;
        let e = blk.epoch;
        let same_warp_synced = |other: u16, rec: u32| other / 32 == tid / 32 && wsync > rec;
        for i in o..o + size {
            let c = &mut blk.race[i];
            match kind {
                AccessKind::Read => {
                    if c.w_epoch == e && c.w_tid != tid && !same_warp_synced(c.w_tid, c.w_wsync) {
                        return Err(self.race_err(
                            "read-after-write",
                            o,
                            size,
                            i,
                            c.w_tid,
                            c.w_pc as usize,
                            tid,
                            pc,
                        ));
                    }
                    if c.r_epoch != e {
                        c.r_epoch = e;
                        c.r_tid = tid;
                        c.r_warp = widx;
                        c.r_wsync = wsync;
                        c.r_pc = pc as u32;
                    } else if c.r_tid != tid {
                        c.r_tid = MULTI;
                        if c.r_warp != widx {
                            c.r_warp = MULTI;
                        }
                        c.r_wsync = c.r_wsync.min(wsync);
                    }
                }
                AccessKind::Write | AccessKind::Atomic(..) => {
                    let atomic = matches!(kind, AccessKind::Atomic(..));
                    if c.w_epoch == e
                        && c.w_tid != tid
                        && !(atomic && c.w_atomic)
                        && !same_warp_synced(c.w_tid, c.w_wsync)
                    {
                        return Err(self.race_err(
                            "write-after-write",
                            o,
                            size,
                            i,
                            c.w_tid,
                            c.w_pc as usize,
                            tid,
                            pc,
                        ));
                    }
                    if c.r_epoch == e && c.r_tid != tid {
                        let synced = c.r_warp == widx && wsync > c.r_wsync;
                        if !synced {
                            let other = if c.r_tid == MULTI { u16::MAX } else { c.r_tid };
                            return Err(self.race_err(
                                "write-after-read",
                                o,
                                size,
                                i,
                                other,
                                c.r_pc as usize,
                                tid,
                                pc,
                            ));
                        }
                    }
                    c.w_epoch = e;
                    c.w_tid = tid;
                    c.w_wsync = wsync;
                    c.w_pc = pc as u32;
                    c.w_atomic = atomic;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn race_err(
        &self,
        hazard: &str,
        o: usize,
        size: usize,
        byte: usize,
        other: u16,
        other_pc: usize,
        tid: u16,
        pc: usize,
    ) -> AccessErr {
        let _ = (tid, pc);
        let who = if other == u16::MAX {
            "several threads".to_string()
        } else {
            let t = self.tid3(u32::from(other));
            format!("thread ({},{},{})", t[0], t[1], t[2])
        };
        AccessErr {
            checker: "racecheck",
            code: CudaCode::IllegalAddress,
            detail: format!(
                "{} hazard on shared byte {:#x} (this {}-byte access at shared address {:#x}) with \
                 {} at {} and no barrier between",
                hazard,
                byte,
                size,
                o,
                who,
                self.prog.location(other_pc)
            ),
        }
    }

    fn collective(
        &mut self,
        blk: &mut Block,
        wi: usize,
        pc: u32,
        m: u32,
        exec: u32,
    ) -> EmuResult<Step> {
        blk.warps[wi].conv = false;
        let prog = self.prog;
        let pcu = pc as usize;
        let inst = &prog.insts[pcu];
        let w = &blk.warps[wi];
        let waiting_here = bits(w.waiting)
            .filter(|&l| w.pc[l] == pc)
            .fold(0u32, |a, l| a | 1 << l);
        let part = exec | waiting_here;
        let mask_src = match &inst.op {
            Op::WarpSync { mask } | Op::Shfl { mask, .. } | Op::Vote { mask, .. } => Some(*mask),
            _ => None,
        };
        let required = match mask_src {
            Some(ms) => {
                let mut req = 0u32;
                for l in bits(part) {
                    let mv = self.src_val(w, ms, l) as u32;
                    if self.ck.synccheck && mv & (1 << l) == 0 {
                        return Err(self.report(
                            "synccheck",
                            CudaCode::LaunchFailed,
                            blk,
                            w.index,
                            l,
                            pcu,
                            &format!("the executing lane is not in its membermask {:#010x}", mv),
                        ));
                    }
                    req |= mv;
                }
                req
            }
            None => w.valid,
        };
        if part != 0 && required & !w.valid != 0 && self.ck.synccheck {
            let l = part.trailing_zeros() as usize;
            return Err(self.report("synccheck", CudaCode::LaunchFailed, blk, w.index, l, pcu, &format!("membermask {:#010x} names lanes that do not exist in this warp (valid lanes {:#010x})", required, w.valid)));
        }
        if part != 0 && required & w.exited != 0 {
            let l = part.trailing_zeros() as usize;
            return Err(self.report(
                "synccheck",
                CudaCode::LaunchFailed,
                blk,
                w.index,
                l,
                pcu,
                &format!(
                    "membermask {:#010x} names exited lanes {:#010x}",
                    required,
                    required & w.exited
                ),
            ));
        }
        if required & !part & w.valid != 0 {
            let w = &mut blk.warps[wi];
            w.waiting |= exec;
            advance(w, m & !exec);
            return Ok(Step::Continue);
        }
        if part != 0 {
            self.collective_exec(blk, wi, pcu, part)?;
        }
        let w = &mut blk.warps[wi];
        if part == w.live() {
            w.wsync = w.wsync.wrapping_add(1);
        }
        w.waiting &= !part;
        advance(w, m | waiting_here);
        Ok(Step::Continue)
    }

    fn collective_exec(
        &mut self,
        blk: &mut Block,
        wi: usize,
        pcu: usize,
        part: u32,
    ) -> EmuResult<()> {
        let prog = self.prog;
        let inst = &prog.insts[pcu];
        match &inst.op {
            Op::WarpSync { .. } => {}
            Op::Shfl {
                mode,
                dst,
                pred,
                a,
                b,
                c,
                ..
            } => {
                let w = &mut blk.warps[wi];
                let mut av = [0u64; 32];
                for (l, v) in av.iter_mut().enumerate() {
                    *v = self.src_val(w, *a, l);
                }
                let mut out = [(0u64, false); 32];
                for l in bits(part) {
                    let bv = (self.src_val(w, *b, l) & 0x1f) as i32;
                    let cv = self.src_val(w, *c, l) as u32;
                    let segmask = ((cv >> 8) & 0x1f) as i32;
                    let li = l as i32;
                    let max_lane = (li & segmask) | ((cv & 0x1f) as i32 & !segmask);
                    let min_lane = li & segmask;
                    let (j, p) = match mode {
                        ShflMode::Up => {
                            let j = li - bv;
                            (j, j >= max_lane)
                        }
                        ShflMode::Down => {
                            let j = li + bv;
                            (j, j <= max_lane)
                        }
                        ShflMode::Bfly => {
                            let j = li ^ bv;
                            (j, j <= max_lane)
                        }
                        ShflMode::Idx => {
                            let j = min_lane | (bv & !segmask);
                            (j, j <= max_lane)
                        }
                    };
                    let j = if p && (0..32).contains(&j) {
                        j as usize
                    } else {
                        l
                    };
                    out[l] = (av[j], p);
                }
                for l in bits(part) {
                    if let Some(d) = dst {
                        w.regs[*d as usize * 32 + l] = out[l].0 & prog.reg_mask[*d as usize];
                    }
                    if let Some(p) = pred {
                        w.regs[*p as usize * 32 + l] = u64::from(out[l].1);
                    }
                }
            }
            Op::Vote { mode, dst, a, .. } => {
                let w = &mut blk.warps[wi];
                let mut ballot = 0u32;
                for l in bits(part) {
                    if self.src_val(w, *a, l) & 1 != 0 {
                        ballot |= 1 << l;
                    }
                }
                let v = match mode {
                    VoteMode::Ballot => u64::from(ballot),
                    VoteMode::All => u64::from(ballot == part),
                    VoteMode::Any => u64::from(ballot != 0),
                    VoteMode::Uni => u64::from(ballot == part || ballot == 0),
                };
                for l in bits(part) {
                    w.regs[*dst as usize * 32 + l] = v & prog.reg_mask[*dst as usize];
                }
            }
            Op::Matrix(mop) => {
                self.stats.mma_instructions += 1;
                if let Some(p) = self.profile.as_deref_mut() {
                    use super::mma_glue::MatrixOp;
                    match &**mop {
                        MatrixOp::Mma { m, .. } => {
                            p.c.mma += 1;
                            p.c.matrix_flops += match m.kind {
                                super::mma::MmaKind::I8S32 { .. } => 2 * 16 * 8 * 32,
                                _ => 2 * 16 * 8 * 16,
                            };
                        }
                        MatrixOp::Wmma { .. } => {
                            p.c.wmma += 1;
                            p.c.matrix_flops += 2 * 16 * 16 * 16;
                        }
                        _ => {}
                    }
                }
                self.matrix(blk, wi, pcu, part, mop)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn matrix(
        &mut self,
        blk: &mut Block,
        wi: usize,
        pcu: usize,
        part: u32,
        mop: &super::mma_glue::MatrixOp,
    ) -> EmuResult<()> {
        use super::mma_glue::MatrixOp;
        let prog = self.prog;
        let widx = blk.warps[wi].index;
        if part != u32::MAX {
            let l = part.trailing_zeros() as usize;
            return Err(self.report(
                "synccheck",
                CudaCode::LaunchFailed,
                blk,
                widx,
                l,
                pcu,
                &format!(
                    "a warp-wide matrix instruction executed by lanes {} only (all 32 lanes must)",
                    lanes_str(part)
                ),
            ));
        }
        let gather = |w: &Warp, v: &[Src]| -> Vec<u32> {
            let mut out = vec![0u32; 32 * v.len()];
            for lane in 0..32 {
                for (i, s) in v.iter().enumerate() {
                    out[lane * v.len() + i] = self.src_val(w, *s, lane) as u32;
                }
            }
            out
        };
        let scatter = |w: &mut Warp, d: &[u32], vals: &[u32]| {
            for lane in 0..32 {
                for (i, r) in d.iter().enumerate() {
                    w.regs[*r as usize * 32 + lane] =
                        u64::from(vals[lane * d.len() + i]) & prog.reg_mask[*r as usize];
                }
            }
        };
        match mop {
            MatrixOp::Mma { m, d, a, b, c } => {
                let w = &blk.warps[wi];
                let (av, bv, cv) = (gather(w, a), gather(w, b), gather(w, c));
                let mut dv = vec![0u32; 32 * d.len()];
                m.exec(&av, &bv, &cv, &mut dv);
                scatter(&mut blk.warps[wi], d, &dv);
            }
            MatrixOp::Wmma { w: op, d, a, b, c } => {
                let w = &blk.warps[wi];
                let (av, bv, cv) = (gather(w, a), gather(w, b), gather(w, c));
                let mut dv = vec![0u32; 32 * d.len()];
                if let Err(e) = op.exec(&av, &bv, &cv, &mut dv) {
                    return Err(self.report(
                        "wmma",
                        CudaCode::IllegalInstruction,
                        blk,
                        widx,
                        0,
                        pcu,
                        &e,
                    ));
                }
                scatter(&mut blk.warps[wi], d, &dv);
            }
            MatrixOp::Load {
                ls,
                space,
                addr,
                stride,
                ..
            }
            | MatrixOp::Store {
                ls,
                space,
                addr,
                stride,
                ..
            } => {
                let is_load = matches!(mop, MatrixOp::Load { .. });
                let w = &blk.warps[wi];
                let base = self.addr_val(w, addr, 0);
                let st = stride
                    .map(|s| self.src_val(w, s, 0))
                    .unwrap_or(super::mma::WMMA_DEFAULT_STRIDE);
                for lane in 1..32 {
                    let b2 = self.addr_val(w, addr, lane);
                    let s2 = stride.map(|s| self.src_val(w, s, lane)).unwrap_or(st);
                    if b2 != base || s2 != st {
                        return Err(self.report("synccheck", CudaCode::LaunchFailed, blk, widx, lane, pcu, &format!("wmma address/stride differ across the warp (lane 0: {:#x}/{}, lane {}: {:#x}/{})", base, st, lane, b2, s2)));
                    }
                }
                if self.ck.memcheck {
                    if let Err(e) = ls.check_alignment(base, st) {
                        return Err(self.report(
                            "memcheck",
                            CudaCode::MisalignedAddress,
                            blk,
                            widx,
                            0,
                            pcu,
                            &e,
                        ));
                    }
                }
                let frag = ls.frag;
                let eb = frag.ty.bytes();
                let per = frag.per_reg();
                let nregs = frag.regs();
                let elems = frag.elems();
                let mut vals = vec![0u32; 32 * nregs];
                if !is_load {
                    if let MatrixOp::Store { srcs, .. } = mop {
                        vals = gather(&blk.warps[wi], srcs);
                    }
                }
                for lane in 0..32 {
                    for e in 0..elems {
                        let a = ls.element_addr(lane, e, base, st);
                        let reg = e / per;
                        let sh = (e % per) * 8 * eb;
                        let mut buf = [0u8; 64];
                        let kind = if is_load {
                            AccessKind::Read
                        } else {
                            let v = vals[lane * nregs + reg] >> sh;
                            le_write(u64::from(v), &mut buf[..eb]);
                            AccessKind::Write
                        };
                        self.access_reported(blk, wi, lane, pcu, *space, a, eb, &mut buf, kind)?;
                        if is_load {
                            // Elements are at most 4 bytes.
                            let v = le_read(&buf[..eb]) as u32;
                            vals[lane * nregs + reg] |= v << sh;
                        }
                    }
                }
                if let MatrixOp::Load { dsts, .. } = mop {
                    scatter(&mut blk.warps[wi], dsts, &vals);
                }
            }
        }
        Ok(())
    }
}

fn unreachable_generic() -> Result<(), AccessErr> {
    Err(AccessErr {
        checker: "memcheck",
        code: CudaCode::Unknown,
        detail: "internal error: unresolved generic address".into(),
    })
}

#[derive(Clone, Copy)]
enum AccessKind {
    Read,
    Write,
    Atomic(AtomOp, AtomTy, u64, u64),
}

enum Step {
    Continue,
    Yield,
    /// The warp cannot continue this slice; `true` if its state changed.
    Stop(bool),
}

#[inline]
fn advance(w: &mut Warp, m: u32) {
    for l in bits(m) {
        w.pc[l] += 1;
    }
}

/// Applies an atomic to `cell` (little endian), leaving the old value in `old`.
fn atomic(cell: &mut [u8], op: AtomOp, ty: AtomTy, b: u64, c: u64, old: &mut [u8]) {
    let n = cell.len();
    let v = le_read(cell);
    old[..n].copy_from_slice(cell);
    let m = if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    };
    let b = b & m;
    let r = match (op, ty) {
        (AtomOp::Exch, _) => b,
        (AtomOp::Cas, _) => {
            if v == b {
                c & m
            } else {
                v
            }
        }
        (AtomOp::And, _) => v & b,
        (AtomOp::Or, _) => v | b,
        (AtomOp::Xor, _) => v ^ b,
        (AtomOp::Add, AtomTy::F32) => {
            u64::from((f32::from_bits(v as u32) + f32::from_bits(b as u32)).to_bits())
        }
        (AtomOp::Add, AtomTy::F64) => (f64::from_bits(v) + f64::from_bits(b)).to_bits(),
        (AtomOp::Add, _) => v.wrapping_add(b),
        (AtomOp::Inc, _) => {
            if v as u32 >= b as u32 {
                0
            } else {
                v + 1
            }
        }
        (AtomOp::Dec, _) => {
            if v == 0 || v as u32 > b as u32 {
                b
            } else {
                v - 1
            }
        }
        (AtomOp::Min | AtomOp::Max, t) => {
            let less = match t {
                AtomTy::U32 | AtomTy::U64 => b < v,
                AtomTy::S32 => (b as u32 as i32) < (v as u32 as i32),
                AtomTy::S64 => (b as i64) < (v as i64),
                AtomTy::F32 => f32::from_bits(b as u32) < f32::from_bits(v as u32),
                AtomTy::F64 => f64::from_bits(b) < f64::from_bits(v),
            };
            let take_b = if op == AtomOp::Min {
                less
            } else {
                !less && b != v
            };
            if take_b {
                b
            } else {
                v
            }
        }
    } & m;
    le_write(r, cell);
}

/// The little-endian value of `bytes` (at most 8).
fn le_read(bytes: &[u8]) -> u64 {
    let mut v = 0u64;
    for (k, byte) in bytes.iter().enumerate() {
        v |= u64::from(*byte) << (8 * k);
    }
    v
}

/// Writes the low `bytes.len()` bytes (at most 8) of `v` to `bytes`, little endian.
fn le_write(v: u64, bytes: &mut [u8]) {
    for (k, byte) in bytes.iter_mut().enumerate() {
        *byte = (v >> (8 * k)) as u8;
    }
}
