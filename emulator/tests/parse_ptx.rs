//! The PTX parser on the crate's real PTX (`ptx/*.ptx`, nvcc 13.0, PTX ISA 9.0) and the fatbin
//! reader on nvcc's fatbins.
use lora_kernels_emulator::ptx::ir::{Module, Operand, Space, SymbolRef, Type};
use lora_kernels_emulator::ptx::parse_ptx;
use std::path::PathBuf;

fn ptx_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ptx")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(ptx_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const FILES: [&str; 7] = [
    "dora.ptx",
    "int8.ptx",
    "linear.ptx",
    "lora_forward.ptx",
    "lora_shrink.ptx",
    "mixed_batch.ptx",
    "quant4.ptx",
];

fn parse_all() -> Vec<(&'static str, Module)> {
    FILES
        .iter()
        .map(|f| {
            let m = parse_ptx(&read(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (*f, m)
        })
        .collect()
}

#[test]
fn every_kernel_of_every_file_parses() {
    let t0 = std::time::Instant::now();
    let mods = parse_all();
    eprintln!("parsed {} files in {:?}", mods.len(), t0.elapsed());
    let mut total = 0;
    for (f, m) in &mods {
        let text = read(f);
        // Every `.entry` line of the text became a kernel, in order.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(".visible .entry "))
            .map(|l| l.trim_end_matches('('))
            .collect();
        let parsed: Vec<&str> = m.kernels.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(parsed, names, "{f}");
        assert_eq!(m.version, (9, 0), "{f}");
        assert_eq!(m.target, vec!["sm_80".to_string()], "{f}");
        assert_eq!(m.address_size, 64, "{f}");
        assert!(!m.files.is_empty(), "{f}: .file directives");
        for k in &m.kernels {
            assert!(!k.body.is_empty(), "{f}: {}", k.name);
            for ins in &k.body {
                for o in &ins.operands {
                    if let Operand::Label(t) = o {
                        assert!(*t as usize <= k.body.len(), "{f}: {} label {t}", k.name);
                    }
                    if let Operand::Reg(r) = o {
                        assert!((r.0 as usize) < k.regs.len());
                    }
                }
                // nvcc emits `.loc` before every instruction with -lineinfo.
                assert!(
                    ins.loc.is_some(),
                    "{f}: {} line {} has no loc",
                    k.name,
                    ins.ptx_line
                );
            }
        }
        total += m.kernels.len();
    }
    assert_eq!(total, 66);
}
