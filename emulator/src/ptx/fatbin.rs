//! The fatbin container nvcc embeds. CONTRACT: `ptx_from_image` keeps this signature.
//!
//! NVIDIA does not document the fatbin format. The layout below was worked out from the files
//! nvcc 13.0 writes (`nvcc -fatbin`, with every `-compress-mode`) and agrees with public
//! descriptions of it. All integers are little-endian. Only the fields marked (used) are read.
//!
//! Container header, 16 bytes (several containers may follow one another):
//!
//! | offset | type | field |
//! |-------:|------|-------|
//! | 0  | u32 | magic `0xBA55ED50` (used) |
//! | 4  | u16 | version (1) |
//! | 6  | u16 | header size (16) (used) |
//! | 8  | u64 | size of the entries that follow the header (used) |
//!
//! Entry header (its own size at offset 4; 104 bytes for PTX, 72 for ELF with nvcc 13), then the
//! payload:
//!
//! | offset | type | field |
//! |-------:|------|-------|
//! | 0  | u16 | kind: 1 = PTX, 2 = ELF (SASS cubin) (used) |
//! | 2  | u16 | 0x0101 |
//! | 4  | u32 | entry header size: the payload starts this far from the entry (used) |
//! | 8  | u64 | payload size, padded (used: the next entry follows the payload) |
//! | 16 | u32 | compressed size, 0 when not compressed (used) |
//! | 20 | u32 | offset of the options string descriptor, or 0 |
//! | 24 | u16 | minor version (PTX ISA minor for PTX) |
//! | 26 | u16 | major version |
//! | 28 | u32 | compute capability, `major * 10 + minor` (80 = sm_80 / compute_80) (used) |
//! | 32 | u32 | offset of the source file name |
//! | 36 | u32 | its length |
//! | 40 | u64 | flags: `0x1` 64-bit, `0x10` host Linux, `0x2000` LZ4-compressed, `0x8000` zstd-compressed (used) |
//! | 48 | u64 | 0 |
//! | 56 | u64 | uncompressed size, when compressed (used) |
//!
//! `nvcc -compress-mode=default|size|balance` (and no option) zstd-compresses the PTX (flag
//! `0x8000`, payload a zstd frame); `speed` uses an LZ4 raw block (flag `0x2000`); `none` (or
//! `-no-compress`) stores the text padded with NULs. The zstd frame is decoded by the pure-Rust
//! `ruzstd`; the LZ4 block by a small decoder here.
//!
//! Images that are not fatbins are taken as PTX text (up to the first NUL). ELF cubins (SASS only)
//! are refused: the emulator needs PTX.

/// Fatbin container magic.
pub const FATBIN_MAGIC: u32 = 0xBA55_ED50;
const ENTRY_PTX: u16 = 1;
const ENTRY_ELF: u16 = 2;
const FLAG_LZ4: u64 = 0x2000;
const FLAG_ZSTD: u64 = 0x8000;
/// The emulated device's compute capability: PTX for a higher one cannot run on it.
const DEVICE_ARCH: u32 = 80;
/// The largest decompressed PTX accepted (a guard against corrupt size fields).
const MAX_PTX_BYTES: u64 = 1 << 30;

/// The PTX text to run from a module image given to `cuModuleLoadData`: a fatbin (magic
/// `0xBA55ED50`, PTX entries possibly zstd-compressed) or NUL-terminated PTX text. Picks the PTX
/// entry (the highest compute capability not above 8.0 when there are several) and ignores SASS.
pub fn ptx_from_image(image: &[u8]) -> Result<String, String> {
    if image.len() >= 4 && read_u32(image, 0) == Some(FATBIN_MAGIC) {
        return ptx_from_fatbin(image);
    }
    if image.starts_with(b"\x7fELF") {
        return Err("the image is an ELF cubin (SASS only); the emulator needs PTX".into());
    }
    let text = match image.iter().position(|&b| b == 0) {
        Some(n) => &image[..n],
        None => image,
    };
    match std::str::from_utf8(text) {
        Ok(s) if !s.trim().is_empty() => Ok(s.to_string()),
        Ok(_) => Err("the image is empty: neither a fatbin nor PTX text".into()),
        Err(e) => Err(format!(
            "the image is neither a fatbin (no magic 0x{FATBIN_MAGIC:08X}) nor PTX text \
             (invalid UTF-8 at byte {})",
            e.valid_up_to()
        )),
    }
}

/// The size in bytes of the fatbin container whose first 16 bytes are `header` (its header plus
/// its entries); `None` if it is not a fatbin. For callers that receive a bare pointer (as
/// `cuModuleLoadData` does) and must know how much to read. nvcc's `-fatbin` output is one
/// container; [`ptx_from_image`] also reads containers that follow one another.
pub fn fatbin_size(header: &[u8]) -> Option<u64> {
    if read_u32(header, 0)? != FATBIN_MAGIC {
        return None;
    }
    let hs = read_u16(header, 6)? as u64;
    let size = read_u64(header, 8)?;
    hs.checked_add(size)
}

/// The `N` bytes of `b` at `at`; `None` past the end.
fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    bytes_at(b, at).map(u16::from_le_bytes)
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    bytes_at(b, at).map(u32::from_le_bytes)
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    bytes_at(b, at).map(u64::from_le_bytes)
}

/// One PTX entry found in a fatbin.
struct PtxEntry<'a> {
    arch: u32,
    flags: u64,
    payload: &'a [u8],
    compressed_size: u32,
    uncompressed_size: u64,
    offset: usize,
}

fn ptx_from_fatbin(image: &[u8]) -> Result<String, String> {
    let mut entries = Vec::new();
    let mut elf_entries = 0usize;
    let mut off = 0usize;
    // Containers, one after another (trailing zero padding is allowed).
    while off < image.len() {
        if image[off..].iter().all(|&b| b == 0) {
            break;
        }
        let magic = read_u32(image, off)
            .ok_or_else(|| format!("truncated fatbin container header at byte {off}"))?;
        if magic != FATBIN_MAGIC {
            if off == 0 {
                return Err("not a fatbin".into());
            }
            // Data after the last container (the caller's buffer may be larger): stop.
            break;
        }
        let (Some(hs), Some(size)) = (read_u16(image, off + 6), read_u64(image, off + 8)) else {
            return Err(format!("truncated fatbin container header at byte {off}"));
        };
        if (hs as usize) < 16 {
            return Err(format!(
                "fatbin container at byte {off}: header size {hs} is below 16"
            ));
        }
        let start = off + hs as usize;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= image.len())
            .ok_or_else(|| {
                format!(
                    "truncated fatbin: the container at byte {off} declares {size} bytes of \
                     entries, the image has {}",
                    image.len().saturating_sub(start)
                )
            })?;
        let mut p = start;
        while p < end {
            let (Some(kind), Some(ehs), Some(psize)) = (
                read_u16(image, p),
                read_u32(image, p + 4),
                read_u64(image, p + 8),
            ) else {
                return Err(format!("truncated fatbin entry header at byte {p}"));
            };
            if ehs < 64 || p + (ehs as usize) > end {
                return Err(format!(
                    "fatbin entry at byte {p}: header size {ehs} is out of bounds"
                ));
            }
            let pstart = p + ehs as usize;
            let pend = usize::try_from(psize)
                .ok()
                .and_then(|s| pstart.checked_add(s))
                .filter(|&e| e <= end)
                .ok_or_else(|| {
                    format!("truncated fatbin: the entry at byte {p} declares a {psize}-byte payload past the container's end")
                })?;
            // The header is at least 64 bytes (checked above), so these reads succeed.
            let csize = read_u32(image, p + 16).unwrap_or(0);
            let arch = read_u32(image, p + 28).unwrap_or(0);
            let flags = read_u64(image, p + 40).unwrap_or(0);
            let usize_ = read_u64(image, p + 56).unwrap_or(0);
            match kind {
                ENTRY_PTX => entries.push(PtxEntry {
                    arch,
                    flags,
                    payload: &image[pstart..pend],
                    compressed_size: csize,
                    uncompressed_size: usize_,
                    offset: p,
                }),
                ENTRY_ELF => elf_entries += 1,
                _ => {} // Unknown kinds are skipped, like SASS.
            }
            p = pend;
        }
        off = end;
    }
    let archs: Vec<String> = entries
        .iter()
        .map(|e| format!("compute_{}", e.arch))
        .collect();
    let Some(best) = entries
        .iter()
        .filter(|e| e.arch <= DEVICE_ARCH)
        .max_by_key(|e| e.arch)
    else {
        return Err(if entries.is_empty() {
            format!(
                "the fatbin has no PTX entry ({elf_entries} SASS entr{}); the emulator runs PTX \
                 only: build with -gencode=arch=compute_80,code=compute_80",
                if elf_entries == 1 { "y" } else { "ies" }
            )
        } else {
            format!(
                "the fatbin's PTX is for {} only; the emulated device is compute capability 8.0",
                archs.join(", ")
            )
        });
    };
    let bytes = decode_entry(best)?;
    let text = match bytes.iter().position(|&b| b == 0) {
        Some(n) => &bytes[..n],
        None => &bytes[..],
    };
    std::str::from_utf8(text).map(str::to_string).map_err(|e| {
        format!(
            "the fatbin's compute_{} PTX (entry at byte {}) is not UTF-8 text (at byte {})",
            best.arch,
            best.offset,
            e.valid_up_to()
        )
    })
}

/// The payload of a PTX entry, decompressed.
fn decode_entry(e: &PtxEntry<'_>) -> Result<Vec<u8>, String> {
    let what = format!("the compute_{} PTX entry at byte {}", e.arch, e.offset);
    if e.flags & (FLAG_ZSTD | FLAG_LZ4) == 0 {
        return Ok(e.payload.to_vec());
    }
    let compressed = e
        .payload
        .get(..e.compressed_size as usize)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            format!(
                "{what}: compressed size {} is 0 or larger than its {}-byte payload",
                e.compressed_size,
                e.payload.len()
            )
        })?;
    if e.uncompressed_size == 0 || e.uncompressed_size > MAX_PTX_BYTES {
        return Err(format!(
            "{what}: implausible uncompressed size {}",
            e.uncompressed_size
        ));
    }
    let out = if e.flags & FLAG_ZSTD != 0 {
        zstd(compressed, e.uncompressed_size).map_err(|m| format!("{what}: bad zstd data: {m}"))?
    } else {
        lz4_block(compressed, e.uncompressed_size as usize)
            .map_err(|m| format!("{what}: bad LZ4 data: {m}"))?
    };
    if out.len() as u64 != e.uncompressed_size {
        return Err(format!(
            "{what}: decompressed to {} bytes, the header says {}",
            out.len(),
            e.uncompressed_size
        ));
    }
    Ok(out)
}

/// Decodes a zstd frame of (at most) `expected` bytes.
fn zstd(data: &[u8], expected: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    // ruzstd reports malformed frames as errors; the unwind guard is belt and braces, so that no
    // input can bring down the process that loaded the emulator through a third-party decoder.
    let result = std::panic::catch_unwind(|| -> Result<Vec<u8>, String> {
        let mut src = data;
        let decoder =
            ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(expected as usize);
        // One byte more than expected, to notice a frame that is too long.
        decoder
            .take(expected + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    });
    result.unwrap_or_else(|_| Err("the zstd decoder failed".into()))
}

/// Decodes one raw LZ4 block (the LZ4 block format: sequences of a token, literals, a 16-bit
/// offset and a match) into exactly `expected` bytes at most.
fn lz4_block(data: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(expected);
    let mut i = 0usize;
    let byte = |i: &mut usize| -> Result<u8, String> {
        let b = *data.get(*i).ok_or("truncated block")?;
        *i += 1;
        Ok(b)
    };
    let length = |i: &mut usize, mut n: usize| -> Result<usize, String> {
        if n == 15 {
            loop {
                let b = byte(i)?;
                n = n.checked_add(b as usize).ok_or("length overflow")?;
                if b != 255 {
                    break;
                }
            }
        }
        Ok(n)
    };
    loop {
        let token = byte(&mut i)?;
        let lit = length(&mut i, (token >> 4) as usize)?;
        let lit_end = i
            .checked_add(lit)
            .filter(|&e| e <= data.len())
            .ok_or("literals past the end")?;
        if out.len() + lit > expected {
            return Err("output longer than the header says".into());
        }
        out.extend_from_slice(&data[i..lit_end]);
        i = lit_end;
        if i == data.len() {
            return Ok(out); // The last sequence has no match.
        }
        let lo = byte(&mut i)? as usize;
        let hi = byte(&mut i)? as usize;
        let offset = lo | (hi << 8);
        if offset == 0 || offset > out.len() {
            return Err(format!(
                "match offset {offset} outside the {} bytes so far",
                out.len()
            ));
        }
        let mlen = length(&mut i, (token & 15) as usize)?
            .checked_add(4)
            .ok_or("length overflow")?;
        if out.len() + mlen > expected {
            return Err("output longer than the header says".into());
        }
        let from = out.len() - offset;
        for k in 0..mlen {
            let b = out[from + k];
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_block_literals_and_overlapping_match() {
        // "abc" then a match of offset 3, length 9 ("abcabcabc"), then literal "Z".
        let data = [0x35, b'a', b'b', b'c', 3, 0, 0x10, b'Z'];
        assert_eq!(lz4_block(&data, 13).unwrap(), b"abcabcabcabcZ");
        // An offset before the start, a truncated block, output past the expected size.
        assert!(lz4_block(&[0x10, b'a', 5, 0], 10).is_err());
        assert!(lz4_block(&[0x30, b'a'], 10).is_err());
        assert!(lz4_block(&data, 5).is_err());
    }

    #[test]
    fn plain_text_and_garbage() {
        assert_eq!(
            ptx_from_image(b".version 9.0\0junk").unwrap(),
            ".version 9.0"
        );
        assert_eq!(ptx_from_image(b".version 9.0").unwrap(), ".version 9.0");
        assert!(ptx_from_image(b"").is_err());
        assert!(ptx_from_image(b"\0").is_err());
        assert!(ptx_from_image(&[0xff, 0xfe, 0x00]).is_err());
        assert!(ptx_from_image(b"\x7fELF\x02\x01")
            .unwrap_err()
            .contains("ELF"));
    }

    /// (kind, arch, flags, payload, compressed size, uncompressed size)
    type Entry<'a> = (u16, u32, u64, &'a [u8], u32, u64);

    /// Builds a fatbin with one entry per [`Entry`].
    fn fatbin(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(kind, arch, flags, payload, csize, usize_) in entries {
            let mut h = vec![0u8; 72];
            h[0..2].copy_from_slice(&kind.to_le_bytes());
            h[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
            h[4..8].copy_from_slice(&72u32.to_le_bytes());
            h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
            h[16..20].copy_from_slice(&csize.to_le_bytes());
            h[28..32].copy_from_slice(&arch.to_le_bytes());
            h[40..48].copy_from_slice(&flags.to_le_bytes());
            h[56..64].copy_from_slice(&usize_.to_le_bytes());
            body.extend_from_slice(&h);
            body.extend_from_slice(payload);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&FATBIN_MAGIC.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn picks_the_highest_ptx_not_above_sm80() {
        let img = fatbin(&[
            (ENTRY_ELF, 80, 0x11, b"\x7fELF....", 0, 0),
            (ENTRY_PTX, 75, 0x11, b"ptx75\0\0\0", 0, 0),
            (ENTRY_PTX, 90, 0x11, b"ptx90\0\0\0", 0, 0),
            (ENTRY_PTX, 80, 0x11, b"ptx80\0\0\0", 0, 0),
            (ENTRY_PTX, 70, 0x11, b"ptx70\0\0\0", 0, 0),
        ]);
        assert_eq!(fatbin_size(&img[..16]), Some(img.len() as u64));
        assert_eq!(ptx_from_image(&img).unwrap(), "ptx80");
        // Only SASS; only PTX above 8.0.
        let e = ptx_from_image(&fatbin(&[(ENTRY_ELF, 80, 0x11, b"x", 0, 0)])).unwrap_err();
        assert!(e.contains("no PTX entry"), "{e}");
        let e = ptx_from_image(&fatbin(&[(ENTRY_PTX, 90, 0x11, b"x", 0, 0)])).unwrap_err();
        assert!(e.contains("compute_90"), "{e}");
        // LZ4 entries decode; bad compressed data and sizes are errors.
        let lz = [0x35, b'a', b'b', b'c', 3, 0, 0x10, b'Z'];
        let img = fatbin(&[(ENTRY_PTX, 80, 0x2011, &lz, lz.len() as u32, 13)]);
        assert_eq!(ptx_from_image(&img).unwrap(), "abcabcabcabcZ");
        let img = fatbin(&[(ENTRY_PTX, 80, 0x2011, &lz, lz.len() as u32, 14)]);
        assert!(ptx_from_image(&img).is_err());
        let img = fatbin(&[(ENTRY_PTX, 80, 0x8011, b"not zstd", 8, 100)]);
        let e = ptx_from_image(&img).unwrap_err();
        assert!(e.contains("zstd"), "{e}");
        let img = fatbin(&[(ENTRY_PTX, 80, 0x8011, b"abc", 9, 100)]);
        assert!(ptx_from_image(&img).is_err());
    }

    #[test]
    fn truncated_and_corrupt_containers_are_errors() {
        let img = fatbin(&[(ENTRY_PTX, 80, 0x11, b"ptx80\0\0\0", 0, 0)]);
        for n in 4..img.len() {
            assert!(ptx_from_image(&img[..n]).is_err(), "truncated at {n}");
        }
        // Every single-byte corruption: Ok or Err, never a panic.
        for i in 0..img.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut c = img.clone();
                c[i] = v;
                let _ = ptx_from_image(&c);
            }
        }
    }
}
