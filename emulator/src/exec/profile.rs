//! Per-launch performance counters (off unless asked for): what a kernel's warps asked of the
//! memory system and the issue slots, counted while the PTX runs. These are counts and models,
//! not timings. They never change a result or a checker report.
//!
//! # Counters
//! - Instructions per warp step, by class ([`InstClass`], from the opcode at load time).
//! - Global memory (loads, stores, atomics, and wmma fragment loads/stores), per warp
//!   instruction ("request"): the distinct 32-byte-aligned sectors the active lanes touch, and the
//!   bytes they ask for. Loads and stores are also split by the PTX cache operator
//!   ([`CacheOp`]: default/`.ca`/`.wb`, `.nc` (`ld.global.nc`, `ldu`), `.cg`, `.cs`, other).
//! - Unique bytes: distinct global bytes the launch touched.
//! - An L2 model: a fully associative LRU of 32-byte sectors of [`L2_BYTES`] (the H100/H200
//!   L2, 50 MB), cold at the start of each launch. A load or atomic that misses reads its
//!   sector from DRAM; a store allocates its sector without a read (the L2 keeps byte masks) and
//!   marks it dirty; a dirty sector is written back once, when evicted or at the end of the
//!   launch. `dram_read_bytes` + `dram_write_bytes` is the modelled DRAM traffic.
//! - Shared memory, per request: wavefronts under the bank model below, and the ideal (one per
//!   lane group with an active lane). Excess wavefronts are bank conflicts.
//! - mma.sync and wmma.mma counts and their flops (m16n8k16: 4096, m16n8k32: 8192, wmma
//!   m16n16k16: 8192), warp arrivals at barriers, `nanosleep` executions.
//!
//! # Bank model
//! 32 banks of 4 bytes; word `w = addr / 4` is in bank `w % 32`. Accesses of up to 4 bytes are
//! served for all 32 lanes at once; 8-byte accesses in two groups of 16 lanes (lanes 0-15,
//! 16-31), 16-byte accesses in four groups of 8 lanes (at most 128 bytes, one wavefront, per
//! group). In each group with an active lane, the wavefronts are the most distinct words any one
//! bank is asked for; lanes asking for the same word share it (a broadcast, free). This is the
//! 32-bit rule of the CUDA Programming Guide ("Shared Memory", compute capability 5.x and
//! later) with 64- and 128-bit accesses split the way Nsight Compute's wavefront counts show
//! them; it is a model, not a statement about any GPU's SASS. wmma fragment loads and stores
//! from shared memory are counted as requests but not given wavefronts (the emulator's wmma
//! layout is deliberately not the hardware's).
use super::lower::MemSpace;
use std::collections::{HashMap, VecDeque};

/// The L2 size of the model: 50 MB (2^20 bytes each), the H100 SXM and H200 L2 (NVIDIA's
/// "Hopper Architecture In-Depth" and the Hopper tuning guide).
pub const L2_BYTES: u64 = 50 << 20;
/// Bytes of a sector.
pub const SECTOR: u64 = 32;

/// Instruction classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstClass {
    /// `ld`, `ldu`, `st`, `atom`, `red`, `wmma.load`, `wmma.store`.
    Memory,
    /// Arithmetic, compare and select on f16/bf16/f32/f64 (and packed) types.
    Float,
    /// Arithmetic, logic, shifts, compare and select on integer/bit types.
    Integer,
    /// `cvt`, `cvt.pack`.
    Conversion,
    /// `mma.sync`, `wmma.mma`.
    Mma,
    /// `bar`, `barrier`, `bar.warp.sync`, `membar`, `fence`, `nanosleep`.
    Sync,
    /// Everything else (`mov`, branches, `shfl`, `vote`, special registers, `cvta`, ...).
    Other,
}

pub const CLASSES: [(&str, InstClass); 7] = [
    ("memory", InstClass::Memory),
    ("float", InstClass::Float),
    ("integer", InstClass::Integer),
    ("conversion", InstClass::Conversion),
    ("mma", InstClass::Mma),
    ("sync", InstClass::Sync),
    ("other", InstClass::Other),
];

/// The PTX cache operator of a global access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOp {
    Default,
    Nc,
    Cg,
    Cs,
    Other,
}

pub const CACHE_OPS: [&str; 5] = ["default", "nc", "cg", "cs", "other"];

/// The class and the cache operator of an opcode (`ld.global.nc.v4.f32`).
pub fn classify(opcode: &str) -> (InstClass, CacheOp) {
    let toks: Vec<&str> = opcode.split('.').collect();
    let has = |t: &str| toks[1..].contains(&t);
    let cache = if has("nc") || toks[0] == "ldu" {
        CacheOp::Nc
    } else if has("cg") {
        CacheOp::Cg
    } else if has("cs") {
        CacheOp::Cs
    } else if has("lu") || has("cv") || has("wt") {
        CacheOp::Other
    } else {
        CacheOp::Default
    };
    let float = toks[1..].iter().any(|t| {
        matches!(
            *t,
            "f16" | "f16x2" | "bf16" | "bf16x2" | "f32" | "f64" | "tf32" | "e4m3" | "e5m2"
        )
    });
    let class = match toks[0] {
        "ld" | "ldu" | "st" | "atom" | "red" | "prefetch" => InstClass::Memory,
        "wmma" if has("load") || has("store") => InstClass::Memory,
        "mma" | "wmma" => InstClass::Mma,
        "cvt" => InstClass::Conversion,
        "bar" | "barrier" | "membar" | "fence" | "nanosleep" => InstClass::Sync,
        "add" | "sub" | "mul" | "mad" | "fma" | "div" | "rem" | "min" | "max" | "neg" | "abs"
        | "setp" | "set" | "selp" | "slct" | "rcp" | "sqrt" | "rsqrt" | "ex2" | "lg2" | "sin"
        | "cos" | "tanh" | "testp" | "copysign" | "mul24" | "mad24" | "sad" | "and" | "or"
        | "xor" | "not" | "cnot" | "shl" | "shr" | "shf" | "lop3" | "bfe" | "bfi" | "prmt"
        | "popc" | "clz" | "brev" | "bfind" | "fns" | "dp4a" | "dp2a" => {
            if float {
                InstClass::Float
            } else {
                InstClass::Integer
            }
        }
        _ => InstClass::Other,
    };
    (class, cache)
}

/// Counts of one kind of global request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounts {
    /// Warp instructions with at least one active lane accessing global memory.
    pub requests: u64,
    /// Sum over requests of the distinct 32-byte sectors their lanes touch.
    pub sectors: u64,
    /// Sum over active lanes of the bytes asked for.
    pub bytes: u64,
}

impl GlobalCounts {
    fn add(&mut self, o: &GlobalCounts) {
        self.requests += o.requests;
        self.sectors += o.sectors;
        self.bytes += o.bytes;
    }
}

/// Counts of one kind of shared request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SharedCounts {
    pub requests: u64,
    /// Wavefronts under the bank model (0 for wmma fragments: not modelled).
    pub wavefronts: u64,
    /// One per lane group with an active lane (what a conflict-free request takes).
    pub ideal_wavefronts: u64,
    pub bytes: u64,
}

/// Per-launch counters (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct ProfileCounters {
    pub warp_instructions: u64,
    /// Indexed as [`CLASSES`].
    pub by_class: [u64; 7],
    /// Indexed as [`CACHE_OPS`].
    pub global_load: [GlobalCounts; 5],
    pub global_store: [GlobalCounts; 5],
    pub global_atomic: GlobalCounts,
    /// wmma.load / wmma.store from and to global memory.
    pub global_matrix: GlobalCounts,
    pub shared_load: SharedCounts,
    pub shared_store: SharedCounts,
    pub shared_atomic: SharedCounts,
    pub shared_matrix: SharedCounts,
    /// Local-memory requests and bytes (spills, local arrays).
    pub local_requests: u64,
    pub local_bytes: u64,
    pub unique_bytes: u64,
    pub unique_sector_bytes: u64,
    pub dram_read_bytes: u64,
    pub dram_write_bytes: u64,
    pub mma: u64,
    pub wmma: u64,
    pub matrix_flops: u64,
    pub barriers: u64,
    pub nanosleeps: u64,
}

impl ProfileCounters {
    /// All global loads (every cache operator).
    pub fn loads(&self) -> GlobalCounts {
        let mut t = GlobalCounts::default();
        self.global_load.iter().for_each(|c| t.add(c));
        t
    }
    /// All global stores.
    pub fn stores(&self) -> GlobalCounts {
        let mut t = GlobalCounts::default();
        self.global_store.iter().for_each(|c| t.add(c));
        t
    }
    /// Every global request (loads, stores, atomics, wmma fragments).
    pub fn global_total(&self) -> GlobalCounts {
        let mut t = self.loads();
        t.add(&self.stores());
        t.add(&self.global_atomic);
        t.add(&self.global_matrix);
        t
    }
    /// Modelled DRAM bytes (reads + write-backs).
    pub fn dram_bytes(&self) -> u64 {
        self.dram_read_bytes + self.dram_write_bytes
    }

    /// One JSON object (a single line) with the launch's identity and every counter.
    pub fn to_json(
        &self,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
    ) -> String {
        fn g(c: &GlobalCounts) -> String {
            format!(
                "{{\"requests\":{},\"sectors\":{},\"bytes\":{}}}",
                c.requests, c.sectors, c.bytes
            )
        }
        fn s(c: &SharedCounts) -> String {
            format!(
                "{{\"requests\":{},\"wavefronts\":{},\"ideal_wavefronts\":{},\"bytes\":{}}}",
                c.requests, c.wavefronts, c.ideal_wavefronts, c.bytes
            )
        }
        let by_cache = |a: &[GlobalCounts; 5]| {
            let parts: Vec<String> = CACHE_OPS
                .iter()
                .zip(a)
                .map(|(n, c)| format!("\"{}\":{}", n, g(c)))
                .collect();
            parts.join(",")
        };
        let classes: Vec<String> = CLASSES
            .iter()
            .zip(&self.by_class)
            .map(|((n, _), v)| format!("\"{}\":{}", n, v))
            .collect();
        let mut name = String::new();
        for ch in kernel.chars() {
            match ch {
                '"' => name.push_str("\\\""),
                '\\' => name.push_str("\\\\"),
                c if (c as u32) < 0x20 => name.push_str(&format!("\\u{:04x}", c as u32)),
                c => name.push(c),
            }
        }
        format!(
            "{{\"kernel\":\"{name}\",\"grid\":[{},{},{}],\"block\":[{},{},{}],\"dynamic_shared\":{dyn_shared},\
             \"warp_instructions\":{},\"by_class\":{{{}}},\
             \"global_load\":{},\"global_load_by_cache\":{{{}}},\
             \"global_store\":{},\"global_store_by_cache\":{{{}}},\
             \"global_atomic\":{},\"global_matrix\":{},\"global\":{},\
             \"unique_bytes\":{},\"unique_sector_bytes\":{},\
             \"l2_model\":{{\"kind\":\"lru-32B-sectors\",\"bytes\":{},\"dram_read_bytes\":{},\"dram_write_bytes\":{},\"dram_bytes\":{}}},\
             \"shared_load\":{},\"shared_store\":{},\"shared_atomic\":{},\"shared_matrix\":{},\
             \"local\":{{\"requests\":{},\"bytes\":{}}},\
             \"mma\":{},\"wmma\":{},\"matrix_flops\":{},\"barriers\":{},\"nanosleeps\":{}}}",
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            self.warp_instructions,
            classes.join(","),
            g(&self.loads()),
            by_cache(&self.global_load),
            g(&self.stores()),
            by_cache(&self.global_store),
            g(&self.global_atomic),
            g(&self.global_matrix),
            g(&self.global_total()),
            self.unique_bytes,
            self.unique_sector_bytes,
            L2_BYTES,
            self.dram_read_bytes,
            self.dram_write_bytes,
            self.dram_bytes(),
            s(&self.shared_load),
            s(&self.shared_store),
            s(&self.shared_atomic),
            s(&self.shared_matrix),
            self.local_requests,
            self.local_bytes,
            self.mma,
            self.wmma,
            self.matrix_flops,
            self.barriers,
            self.nanosleeps,
        )
    }
}

/// What an access did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
    Atomic,
}

/// A fully associative LRU of sectors with write-back.
struct L2 {
    cap: usize,
    /// sector -> (last use, dirty)
    map: HashMap<u64, (u64, bool)>,
    queue: VecDeque<(u64, u64)>,
    stamp: u64,
    read: u64,
    write: u64,
}

impl L2 {
    fn new(bytes: u64) -> Self {
        L2 {
            cap: (bytes / SECTOR) as usize,
            map: HashMap::new(),
            queue: VecDeque::new(),
            stamp: 0,
            read: 0,
            write: 0,
        }
    }

    fn touch(&mut self, sector: u64, dir: Dir) {
        self.stamp += 1;
        let st = self.stamp;
        let write = dir != Dir::Read;
        match self.map.get_mut(&sector) {
            Some(e) => {
                e.0 = st;
                e.1 |= write;
            }
            None => {
                if dir != Dir::Write {
                    self.read += SECTOR;
                }
                self.map.insert(sector, (st, write));
                while self.map.len() > self.cap {
                    let Some((s, t)) = self.queue.pop_front() else {
                        break;
                    };
                    // Only the newest queue entry of a sector is live.
                    if self.map.get(&s).is_some_and(|e| e.0 == t)
                        && self.map.remove(&s).is_some_and(|e| e.1)
                    {
                        self.write += SECTOR;
                    }
                }
            }
        }
        self.queue.push_back((sector, st));
        if self.queue.len() > 2 * self.map.len() + 4096 {
            let map = &self.map;
            self.queue
                .retain(|(s, t)| map.get(s).is_some_and(|e| e.0 == *t));
        }
    }

    fn flush(&mut self) {
        self.write += SECTOR * self.map.values().filter(|e| e.1).count() as u64;
        self.map.clear();
        self.queue.clear();
    }
}

/// One lane's access, as the engine resolved it.
#[derive(Clone, Copy)]
pub struct Access {
    pub lane: u8,
    pub space: MemSpace,
    pub addr: u64,
    pub size: u32,
    pub dir: Dir,
}

/// The counters of a running launch.
pub struct Profile {
    pub c: ProfileCounters,
    l2: L2,
    /// sector -> mask of its bytes touched.
    unique: HashMap<u64, u32>,
    /// The current instruction's accesses.
    pub pending: Vec<Access>,
    /// The instruction the pending accesses belong to.
    pub pending_pc: u32,
    sectors: Vec<u64>,
}

impl Default for Profile {
    fn default() -> Self {
        Self::new()
    }
}

impl Profile {
    pub fn new() -> Self {
        Profile {
            c: ProfileCounters::default(),
            l2: L2::new(L2_BYTES),
            unique: HashMap::new(),
            pending: Vec::with_capacity(64),
            pending_pc: 0,
            sectors: Vec::with_capacity(64),
        }
    }

    /// One executed warp instruction of `class`.
    #[inline]
    pub fn inst(&mut self, class: InstClass) {
        self.c.warp_instructions += 1;
        self.c.by_class[class as usize] += 1;
    }

    /// Ends the current instruction: turns its pending accesses into requests.
    /// `matrix`: a wmma fragment load/store; `cache`: the instruction's cache operator.
    pub fn flush(&mut self, matrix: bool, cache: CacheOp) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        // Global part.
        self.sectors.clear();
        let mut bytes = 0u64;
        let mut dir = Dir::Read;
        for a in pending.iter().filter(|a| a.space == MemSpace::Global) {
            dir = a.dir;
            bytes += u64::from(a.size);
            let end = a.addr + u64::from(a.size.max(1)) - 1;
            for s in a.addr / SECTOR..=end / SECTOR {
                self.sectors.push(s);
                let lo = a.addr.max(s * SECTOR) - s * SECTOR;
                let hi = end.min(s * SECTOR + SECTOR - 1) - s * SECTOR;
                let mask = (((1u64 << (hi - lo + 1)) - 1) << lo) as u32;
                *self.unique.entry(s).or_insert(0) |= mask;
            }
        }
        if bytes > 0 {
            self.sectors.sort_unstable();
            self.sectors.dedup();
            for &s in &self.sectors {
                self.l2.touch(s, dir);
            }
            let g = GlobalCounts {
                requests: 1,
                sectors: self.sectors.len() as u64,
                bytes,
            };
            let slot = if matrix {
                &mut self.c.global_matrix
            } else {
                match dir {
                    Dir::Read => &mut self.c.global_load[cache as usize],
                    Dir::Write => &mut self.c.global_store[cache as usize],
                    Dir::Atomic => &mut self.c.global_atomic,
                }
            };
            slot.add(&g);
        }
        // Shared part.
        let mut sh_bytes = 0u64;
        let mut sh_dir = Dir::Read;
        let mut size = 4u32;
        for a in pending.iter().filter(|a| a.space == MemSpace::Shared) {
            sh_bytes += u64::from(a.size);
            sh_dir = a.dir;
            size = size.max(a.size);
        }
        if sh_bytes > 0 {
            let slot = if matrix {
                &mut self.c.shared_matrix
            } else {
                match sh_dir {
                    Dir::Read => &mut self.c.shared_load,
                    Dir::Write => &mut self.c.shared_store,
                    Dir::Atomic => &mut self.c.shared_atomic,
                }
            };
            slot.requests += 1;
            slot.bytes += sh_bytes;
            if !matrix {
                let (w, ideal) = wavefronts(
                    pending
                        .iter()
                        .filter(|a| a.space == MemSpace::Shared)
                        .map(|a| (a.lane, a.addr, a.size)),
                    size,
                );
                slot.wavefronts += w;
                slot.ideal_wavefronts += ideal;
            }
        }
        for a in pending.iter().filter(|a| a.space == MemSpace::Local) {
            self.c.local_bytes += u64::from(a.size);
        }
        if pending.iter().any(|a| a.space == MemSpace::Local) {
            self.c.local_requests += 1;
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// Ends the launch: write-backs and unique bytes.
    pub fn finish(mut self) -> ProfileCounters {
        self.l2.flush();
        self.c.dram_read_bytes = self.l2.read;
        self.c.dram_write_bytes = self.l2.write;
        self.c.unique_bytes = self
            .unique
            .values()
            .map(|m| u64::from(m.count_ones()))
            .sum();
        self.c.unique_sector_bytes = SECTOR * self.unique.len() as u64;
        self.c
    }
}

/// Wavefronts and ideal wavefronts of one shared request: `(lane, byte address, size)` of each
/// active lane; `size` the access size of the instruction (the lane group width follows it).
pub fn wavefronts(lanes: impl Iterator<Item = (u8, u64, u32)>, size: u32) -> (u64, u64) {
    let group = match size {
        0..=4 => 32,
        8 => 16,
        _ => 8,
    };
    let ngroups = 32 / group;
    // per group, per bank: distinct words
    let mut words: Vec<Vec<u64>> = vec![Vec::new(); ngroups * 32];
    let mut active = vec![false; ngroups];
    for (lane, addr, sz) in lanes {
        let gi = lane as usize / group;
        active[gi] = true;
        let first = addr / 4;
        let last = (addr + u64::from(sz.max(1)) - 1) / 4;
        for w in first..=last {
            let v = &mut words[gi * 32 + (w % 32) as usize];
            if !v.contains(&w) {
                v.push(w);
            }
        }
    }
    let mut total = 0u64;
    let mut ideal = 0u64;
    for gi in 0..ngroups {
        if active[gi] {
            ideal += 1;
            total += words[gi * 32..gi * 32 + 32]
                .iter()
                .map(|v| v.len() as u64)
                .max()
                .unwrap_or(0)
                .max(1);
        }
    }
    (total, ideal)
}
