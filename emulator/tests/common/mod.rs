//! Shared helpers for the emulator's own tests: load a committed `.ptx` of
//! `emulator/tests/kernels/`, move typed arrays to and from device memory, launch, and check
//! checker reports.
#![allow(dead_code)]

use lora_kernels_emulator::exec::{
    CudaCode, DeviceConfig, EmuError, FunctionId, Machine, ModuleId,
};
use lora_kernels_emulator::ptx::parse_ptx;

/// The folder of the test kernels (`.cu` and committed `.ptx`).
pub fn kernels_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels")
}

/// A machine with one module loaded.
pub struct Gpu {
    pub m: Machine,
    pub module: ModuleId,
}

impl Gpu {
    /// Parses and loads `tests/kernels/<name>.ptx` on a default machine (all checkers on).
    pub fn load(name: &str) -> Gpu {
        let path = kernels_dir().join(format!("{name}.ptx"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Gpu::from_text(&text)
    }

    /// Parses and loads PTX text on a default machine.
    pub fn from_text(text: &str) -> Gpu {
        let module = parse_ptx(text).unwrap_or_else(|e| panic!("parse_ptx: {e}"));
        let mut m = Machine::new(DeviceConfig::default());
        let module = m
            .load_module(module)
            .unwrap_or_else(|e| panic!("load_module: {e}"));
        Gpu { m, module }
    }

    pub fn func(&self, name: &str) -> FunctionId {
        self.m
            .get_function(self.module, name)
            .unwrap_or_else(|e| panic!("get_function({name}): {e}"))
    }

    /// Allocates and fills a device array.
    pub fn upload<T: Elem>(&mut self, data: &[T]) -> u64 {
        let bytes = to_bytes(data);
        let addr = self
            .m
            .alloc(bytes.len().max(1) as u64)
            .unwrap_or_else(|e| panic!("alloc: {e}"));
        self.m
            .write(addr, &bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
        addr
    }

    /// Allocates `n` elements of `T` and fills them with `fill` (so that initcheck sees them
    /// written; outputs the kernel overwrites use a fill the results cannot equal).
    pub fn filled<T: Elem>(&mut self, n: usize, fill: T) -> u64 {
        self.upload(&vec![fill; n])
    }

    /// Allocates `bytes` without writing them.
    pub fn alloc_raw(&mut self, bytes: u64) -> u64 {
        self.m.alloc(bytes).unwrap_or_else(|e| panic!("alloc: {e}"))
    }

    pub fn download<T: Elem>(&mut self, addr: u64, n: usize) -> Vec<T> {
        let mut bytes = vec![0u8; n * T::SIZE];
        self.m
            .read(addr, &mut bytes)
            .unwrap_or_else(|e| panic!("read: {e}"));
        bytes.chunks_exact(T::SIZE).map(T::from_le).collect()
    }

    /// Launches and returns the result (for tests that expect a failure).
    pub fn try_launch(
        &mut self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        params: &[Vec<u8>],
    ) -> Result<(), EmuError> {
        let f = self.func(name);
        self.m.launch(f, grid, block, 0, params).map(|_| ())
    }

    /// Launches with `dyn_shared` bytes of dynamic shared memory.
    pub fn try_launch_dyn(
        &mut self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        dyn_shared: u32,
        params: &[Vec<u8>],
    ) -> Result<(), EmuError> {
        let f = self.func(name);
        self.m
            .launch(f, grid, block, dyn_shared, params)
            .map(|_| ())
    }

    /// Launches and panics with the emulator's message on failure.
    pub fn launch(&mut self, name: &str, grid: [u32; 3], block: [u32; 3], params: &[Vec<u8>]) {
        if let Err(e) = self.try_launch(name, grid, block, params) {
            panic!("launch of {name} failed: {e}");
        }
    }
}

/// A kernel parameter: a device pointer (its u64 address).
pub fn ptr(addr: u64) -> Vec<u8> {
    addr.to_le_bytes().to_vec()
}

/// A kernel parameter: an `int`.
pub fn int(v: i32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// A plain element type moved through device memory as little-endian bytes.
pub trait Elem: Copy {
    const SIZE: usize;
    fn to_le(self, out: &mut Vec<u8>);
    fn from_le(b: &[u8]) -> Self;
}

macro_rules! elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn to_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_le(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap())
            }
        }
    )*};
}
elem!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

pub fn to_bytes<T: Elem>(data: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * T::SIZE);
    for &x in data {
        x.to_le(&mut out);
    }
    out
}

/// The 1-based line of `emulator/tests/kernels/<file>` that carries the marker `// BUG:<tag>`.
pub fn marked_line(file: &str, tag: &str) -> u32 {
    let text = std::fs::read_to_string(kernels_dir().join(file)).unwrap();
    let marker = format!("// BUG:{tag}");
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end().ends_with(&marker))
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {marker} in {file}: {hits:?}");
    hits[0]
}

/// The hexadecimal numbers (`0x...`) in a message.
pub fn hex_numbers(msg: &str) -> Vec<u64> {
    let lower = msg.to_ascii_lowercase();
    let mut out = Vec::new();
    let b = lower.as_bytes();
    let mut i = 0;
    while i + 2 <= b.len() {
        if b[i] == b'0' && i + 1 < b.len() && b[i + 1] == b'x' {
            let start = i + 2;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            if j > start {
                if let Ok(v) = u64::from_str_radix(&lower[start..j], 16) {
                    out.push(v);
                }
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// The `(x,y,z)` triples in a message (spaces ignored), in order.
pub fn triples(msg: &str) -> Vec<[u32; 3]> {
    let s: String = msg.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = Vec::new();
    for (i, _) in s.match_indices('(') {
        if let Some(end) = s[i + 1..].find(')') {
            let inner = &s[i + 1..i + 1 + end];
            let parts: Vec<&str> = inner.split(',').collect();
            if parts.len() == 3 {
                if let (Ok(a), Ok(b), Ok(c)) =
                    (parts[0].parse(), parts[1].parse(), parts[2].parse())
                {
                    out.push([a, b, c]);
                }
            }
        }
    }
    out
}

/// What a checker report must say.
pub struct Expect<'a> {
    pub code: CudaCode,
    pub kernel: &'a str,
    /// The `.cu` file's base name and the lines any of which may be named.
    pub file: &'a str,
    pub lines: &'a [u32],
    /// The block that must be named.
    pub block: [u32; 3],
    /// Threads any of which may be named.
    pub threads: &'a dyn Fn([u32; 3]) -> bool,
    /// Addresses any of which may be named (`None`: no address check).
    pub addr: Option<&'a dyn Fn(u64) -> bool>,
}

/// Asserts that a launch failed with the expected code and a report that names the kernel,
/// the block and a thread (as `(x, y, z)` triples), an address (hex) and `file:line`.
pub fn assert_report(res: Result<(), EmuError>, exp: &Expect) {
    let err = match res {
        Ok(()) => panic!(
            "{}: the launch succeeded; the checker should have failed it",
            exp.kernel
        ),
        Err(e) => e,
    };
    let msg = &err.message;
    assert_eq!(
        err.code, exp.code,
        "{}: wrong code; message: {msg}",
        exp.kernel
    );
    assert!(msg.contains(exp.kernel), "kernel name missing: {msg}");
    let named_line = exp
        .lines
        .iter()
        .any(|l| msg.contains(&format!("{}:{l}", exp.file)));
    assert!(
        named_line,
        "expected {}:{:?} in the report: {msg}",
        exp.file, exp.lines
    );
    let ts = triples(msg);
    assert!(
        ts.contains(&exp.block),
        "block {:?} not named as a triple: {msg}",
        exp.block
    );
    assert!(
        ts.iter().any(|t| (exp.threads)(*t)),
        "no expected thread named as a triple: {msg}"
    );
    if let Some(addr) = exp.addr {
        assert!(
            hex_numbers(msg).into_iter().any(addr),
            "no expected address (hex) in the report: {msg}"
        );
    }
}
