//! Device memory: allocations in the global address range with redzones between them, a shadow
//! byte per byte (written or not) for initcheck, and the freed ranges for use-after-free reports.
//!
//! Address map of the emulated device (generic addresses):
//! - `[GLOBAL_BASE, GLOBAL_END)`: global memory. Allocations are 256-byte aligned, separated by at
//!   least [`REDZONE`] bytes that belong to no allocation, and never reused after a free, so an
//!   access just past the end of a buffer, or through a dangling pointer, always faults.
//! - `[SHARED_WINDOW, +4 GiB)`: the generic window of the running block's shared memory
//!   (`cvta.shared` adds [`SHARED_WINDOW`] to a shared-space address).
//! - `[LOCAL_WINDOW, +4 GiB)`: the running thread's local memory.
//! - `[PARAM_WINDOW, +4 GiB)`: the kernel parameter buffer. A parameter symbol's address
//!   (`mov.b64 %rd, kernel_param_0`) is `PARAM_WINDOW + offset`, in param space and generic alike.
//!
//! Everything else (small addresses, host pointers) belongs to nothing and faults.

/// First address of global memory.
pub const GLOBAL_BASE: u64 = 0x7e00_0000_0000;
/// One past the last address of global memory.
pub const GLOBAL_END: u64 = 0x7f00_0000_0000;
/// Generic address of shared-space address 0.
pub const SHARED_WINDOW: u64 = 0x7f00_0000_0000;
/// Generic address of local-space address 0.
pub const LOCAL_WINDOW: u64 = 0x7f10_0000_0000;
/// Param-space (and generic) address of the first byte of the kernel parameter buffer.
pub const PARAM_WINDOW: u64 = 0x7d00_0000_0000;
/// Size of each window.
pub const WINDOW_SIZE: u64 = 1 << 32;
/// Bytes between two allocations that belong to neither.
pub const REDZONE: u64 = 4096;
/// Alignment of every allocation.
pub const ALIGN: u64 = 256;

/// What went wrong with one access (the executor adds kernel, block, thread and source line).
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Not inside any live allocation; `near` names the closest allocation (base, size) when the
    /// address lies within a few redzones of it.
    OutOfBounds { near: Option<(u64, u64)> },
    /// Inside a freed allocation (base, size).
    UseAfterFree { base: u64, size: u64 },
    /// Outside the device address ranges altogether (a host pointer, null, garbage).
    Unmapped,
    /// Address not a multiple of the access size.
    Misaligned,
    /// Read of a byte never written (its address).
    Uninitialized { byte: u64 },
    /// Write to read-only memory (the parameter buffer through a generic pointer).
    ReadOnly,
}

impl Fault {
    /// A phrase describing the fault for `addr`.
    pub fn describe(&self, addr: u64) -> String {
        match self {
            Fault::OutOfBounds {
                near: Some((base, size)),
            } => {
                if addr >= base + size {
                    format!(
                        "out of bounds: {} bytes after the end of the {}-byte allocation at {:#x}",
                        addr - (base + size),
                        size,
                        base
                    )
                } else {
                    format!(
                        "out of bounds: {} bytes before the {}-byte allocation at {:#x}",
                        base - addr,
                        size,
                        base
                    )
                }
            }
            Fault::OutOfBounds { near: None } => {
                "out of bounds: the address is in no allocation".to_string()
            }
            Fault::UseAfterFree { base, size } => format!(
                "use after free: inside the freed {}-byte allocation at {:#x}",
                size, base
            ),
            Fault::Unmapped => {
                "the address is not a device address (host pointer, null or garbage)".to_string()
            }
            Fault::Misaligned => "misaligned address".to_string(),
            Fault::Uninitialized { byte } => {
                format!("uninitialized read: byte {:#x} was never written", byte)
            }
            Fault::ReadOnly => "write to read-only memory".to_string(),
        }
    }
}

struct Alloc {
    base: u64,
    size: u64,
    data: Vec<u8>,
    /// 1 where the byte has been written.
    init: Vec<u8>,
}

/// The device's global memory.
pub struct DeviceMemory {
    /// Live allocations, sorted by base (addresses only grow).
    allocs: Vec<Alloc>,
    /// Freed (base, size), sorted by base.
    freed: Vec<(u64, u64)>,
    next: u64,
    live_bytes: u64,
    /// The total size of the emulated device memory.
    pub capacity: u64,
    /// Index of the allocation hit last (a cache for runs of accesses to one buffer).
    last: usize,
}

impl DeviceMemory {
    /// Empty memory of `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        DeviceMemory {
            allocs: Vec::new(),
            freed: Vec::new(),
            next: GLOBAL_BASE + ALIGN * 16,
            live_bytes: 0,
            capacity,
            last: 0,
        }
    }

    /// Bytes currently allocated.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Allocates `bytes` (at least 1), never initialised. `None` when out of memory.
    pub fn alloc(&mut self, bytes: u64) -> Option<u64> {
        let size = bytes.max(1);
        if self.live_bytes.checked_add(size)? > self.capacity {
            return None;
        }
        let base = self.next.div_ceil(ALIGN) * ALIGN;
        let end = base.checked_add(size)?;
        if end + REDZONE > GLOBAL_END {
            return None;
        }
        let n = usize::try_from(size).ok()?;
        self.allocs.push(Alloc {
            base,
            size,
            data: vec![0; n],
            init: vec![0; n],
        });
        self.next = end + REDZONE;
        self.live_bytes += size;
        Some(base)
    }

    /// Frees the allocation whose base is `addr`. Returns false when there is none.
    pub fn free(&mut self, addr: u64) -> bool {
        match self.allocs.binary_search_by_key(&addr, |a| a.base) {
            Ok(i) => {
                let a = self.allocs.remove(i);
                self.live_bytes -= a.size;
                let pos = self.freed.partition_point(|&(b, _)| b < a.base);
                self.freed.insert(pos, (a.base, a.size));
                self.last = 0;
                true
            }
            Err(_) => false,
        }
    }

    /// The live allocation holding `[addr, addr+size)`: (index, offset in it).
    #[inline]
    fn find(&mut self, addr: u64, size: u64) -> Result<(usize, usize), Fault> {
        if let Some(a) = self.allocs.get(self.last) {
            if addr >= a.base && addr - a.base <= a.size && size <= a.size - (addr - a.base) {
                return Ok((self.last, (addr - a.base) as usize));
            }
        }
        let i = self.allocs.partition_point(|a| a.base <= addr);
        if i > 0 {
            let a = &self.allocs[i - 1];
            if addr < a.base + a.size {
                if size <= a.base + a.size - addr {
                    self.last = i - 1;
                    return Ok((i - 1, (addr - a.base) as usize));
                }
                return Err(Fault::OutOfBounds {
                    near: Some((a.base, a.size)),
                });
            }
        }
        Err(self.classify(addr))
    }

    /// Why `addr` is in no live allocation.
    fn classify(&self, addr: u64) -> Fault {
        if !(GLOBAL_BASE..GLOBAL_END).contains(&addr) {
            return Fault::Unmapped;
        }
        let j = self.freed.partition_point(|&(b, _)| b <= addr);
        if j > 0 {
            let (b, s) = self.freed[j - 1];
            if addr < b + s {
                return Fault::UseAfterFree { base: b, size: s };
            }
        }
        // The nearest live allocation within a few redzones.
        let i = self.allocs.partition_point(|a| a.base <= addr);
        let mut best: Option<(u64, u64, u64)> = None;
        if i > 0 {
            let a = &self.allocs[i - 1];
            let d = addr.saturating_sub(a.base + a.size);
            best = Some((d, a.base, a.size));
        }
        if let Some(a) = self.allocs.get(i) {
            let d = a.base - addr;
            if best.is_none_or(|(bd, _, _)| d < bd) {
                best = Some((d, a.base, a.size));
            }
        }
        let near = best
            .filter(|&(d, _, _)| d < 4 * REDZONE)
            .map(|(_, b, s)| (b, s));
        Fault::OutOfBounds { near }
    }

    /// Whether `[addr, addr+bytes)` lies in one live allocation.
    pub fn contains(&self, addr: u64, bytes: u64) -> bool {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        i > 0 && {
            let a = &self.allocs[i - 1];
            addr.checked_add(bytes)
                .is_some_and(|end| end <= a.base + a.size)
        }
    }

    /// A device-side load of `size` bytes (1..=16) into `out`, little endian.
    #[inline]
    pub fn load(
        &mut self,
        addr: u64,
        size: usize,
        initcheck: bool,
        out: &mut [u8],
    ) -> Result<(), Fault> {
        let (i, off) = self.find(addr, size as u64)?;
        let a = &self.allocs[i];
        if initcheck {
            if let Some(k) = a.init[off..off + size].iter().position(|&b| b == 0) {
                return Err(Fault::Uninitialized {
                    byte: addr + k as u64,
                });
            }
        }
        out[..size].copy_from_slice(&a.data[off..off + size]);
        Ok(())
    }

    /// A device-side store of `data`.
    #[inline]
    pub fn store(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        let (i, off) = self.find(addr, data.len() as u64)?;
        let a = &mut self.allocs[i];
        a.data[off..off + data.len()].copy_from_slice(data);
        a.init[off..off + data.len()].fill(1);
        Ok(())
    }

    /// The bytes of `[addr, addr+size)` for a read-modify-write (an atomic); `initcheck` checks
    /// that they were written before.
    #[inline]
    pub fn rmw(&mut self, addr: u64, size: usize, initcheck: bool) -> Result<&mut [u8], Fault> {
        let (i, off) = self.find(addr, size as u64)?;
        let a = &mut self.allocs[i];
        if initcheck {
            if let Some(k) = a.init[off..off + size].iter().position(|&b| b == 0) {
                return Err(Fault::Uninitialized {
                    byte: addr + k as u64,
                });
            }
        }
        a.init[off..off + size].fill(1);
        Ok(&mut a.data[off..off + size])
    }

    /// Host-side write (marks the bytes written).
    pub fn host_write(&mut self, addr: u64, data: &[u8]) -> Result<(), Fault> {
        if data.is_empty() {
            return Ok(());
        }
        self.store(addr, data)
    }

    /// Host-side read (no initcheck: copying back a partly written buffer is legal).
    pub fn host_read(&mut self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        if out.is_empty() {
            return Ok(());
        }
        let (i, off) = self.find(addr, out.len() as u64)?;
        out.copy_from_slice(&self.allocs[i].data[off..off + out.len()]);
        Ok(())
    }

    /// Device-to-device copy; initialisation state travels with the bytes.
    pub fn copy(&mut self, dst: u64, src: u64, bytes: u64) -> Result<(), (u64, Fault)> {
        if bytes == 0 {
            return Ok(());
        }
        let (si, so) = self.find(src, bytes).map_err(|f| (src, f))?;
        let n = bytes as usize;
        let data = self.allocs[si].data[so..so + n].to_vec();
        let init = self.allocs[si].init[so..so + n].to_vec();
        let (di, d_off) = self.find(dst, bytes).map_err(|f| (dst, f))?;
        let a = &mut self.allocs[di];
        a.data[d_off..d_off + n].copy_from_slice(&data);
        a.init[d_off..d_off + n].copy_from_slice(&init);
        Ok(())
    }

    /// `cuMemsetD8`.
    pub fn memset(&mut self, addr: u64, value: u8, bytes: u64) -> Result<(), Fault> {
        if bytes == 0 {
            return Ok(());
        }
        let (i, off) = self.find(addr, bytes)?;
        let n = bytes as usize;
        let a = &mut self.allocs[i];
        a.data[off..off + n].fill(value);
        a.init[off..off + n].fill(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_bounds_free() {
        let mut m = DeviceMemory::new(1 << 30);
        let a = m.alloc(100).unwrap();
        let b = m.alloc(7).unwrap();
        assert_eq!(a % ALIGN, 0);
        assert!(b >= a + 100 + REDZONE);
        m.host_write(a, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        m.load(a, 4, true, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(
            m.load(a + 4, 4, true, &mut out),
            Err(Fault::Uninitialized { byte: a + 4 })
        );
        assert_eq!(
            m.load(a + 99, 2, false, &mut out),
            Err(Fault::OutOfBounds {
                near: Some((a, 100))
            })
        );
        assert_eq!(
            m.load(a + 100, 1, false, &mut out),
            Err(Fault::OutOfBounds {
                near: Some((a, 100))
            })
        );
        assert_eq!(m.load(0x1000, 1, false, &mut out), Err(Fault::Unmapped));
        // A wrapping address must not hit the cached allocation.
        m.load(a, 1, false, &mut out).unwrap();
        assert_eq!(
            m.load(u64::MAX - 1, 4, false, &mut out),
            Err(Fault::Unmapped)
        );
        assert!(m.free(a));
        assert!(!m.free(a));
        assert_eq!(
            m.load(a + 3, 1, false, &mut out),
            Err(Fault::UseAfterFree { base: a, size: 100 })
        );
        m.memset(b, 9, 7).unwrap();
        m.load(b + 6, 1, true, &mut out).unwrap();
        assert_eq!(out[0], 9);
    }
}
