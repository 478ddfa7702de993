//! The PTX parser on the crate's real PTX (`ptx/*.ptx`, nvcc 13.0, PTX ISA 9.0) and the fatbin
//! reader on nvcc's fatbins.
use lora_kernels_emulator::ptx::fatbin::ptx_from_image;
use lora_kernels_emulator::ptx::ir::{
    AddrBase, Loc, Module, Operand, Space, Special, SymbolRef, Type,
};
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
    "lora.ptx",
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
    // The crate's kernels as of the quantiser rework (quant4_nested_offset went to the host): update
    // when a kernel entry is added or removed.
    assert_eq!(total, 65);
}

/// Counts instructions and registers from the text, independently of the parser: every
/// `;`-terminated piece before `.section` that is not a directive, with a one-line scope's `{`
/// and any label stripped; every `%x<N>` declares N registers and every other name one.
fn count_by_lines(text: &str) -> (usize, usize) {
    let text = &text[..text.find(".section").unwrap_or(text.len())];
    let (mut instrs, mut regs) = (0, 0);
    for line in text.lines() {
        let line = line.split("//").next().unwrap();
        for piece in line.split(';') {
            let mut p = piece.trim().trim_start_matches('{').trim();
            if let Some((label, rest)) = p.split_once(':') {
                if label.starts_with("$L") {
                    p = rest.trim();
                }
            }
            if let Some(decl) = p.strip_prefix(".reg") {
                for name in decl.split(',') {
                    regs += match name.split_once('<') {
                        Some((_, n)) => n.trim_end_matches('>').parse::<usize>().unwrap(),
                        None => 1,
                    };
                }
            }
            if !p.is_empty() && !p.starts_with('.') && !p.starts_with('}') && line.contains(';') {
                instrs += 1;
            }
        }
    }
    (instrs, regs)
}

#[test]
fn instruction_and_register_counts_match_the_text() {
    for (f, m) in parse_all() {
        let (instrs, regs) = count_by_lines(&read(f));
        let parsed_instrs: usize = m.kernels.iter().map(|k| k.body.len()).sum();
        let parsed_regs: usize = m.kernels.iter().map(|k| k.regs.len()).sum();
        assert_eq!(parsed_instrs, instrs, "{f}: instructions");
        assert_eq!(parsed_regs, regs, "{f}: registers");
    }
}

#[test]
fn known_facts_of_the_crate_kernels() {
    let mods = parse_all();
    let find = |file: &str, name: &str| {
        let m = &mods.iter().find(|(f, _)| *f == file).unwrap().1;
        m.kernels.iter().find(|k| k.name == name).unwrap().clone()
    };
    let k = find("lora_shrink.ptx", "lora_shrink_f32");
    assert_eq!(k.params.len(), 1);
    let p = &k.params[0];
    assert_eq!(
        (p.name.as_str(), p.ty, p.align, p.size),
        ("lora_shrink_f32_param_0", Type::B8, 8, 288)
    );
    assert_eq!(k.directives.maxntid, Some([256, 1, 1]));
    assert_eq!(k.directives.minnctapersm, None);
    assert_eq!(k.vars.len(), 1);
    let v = &k.vars[0];
    assert_eq!(
        (v.space, v.ty, v.align, v.size, v.is_extern),
        (Space::Shared, Type::B8, 4, 256, false)
    );
    assert!(v
        .name
        .ends_with("lora_shrinkIfEEvRK16LoraShrinkParamsE7partial"));
    // `.reg .pred %p<88>; .reg .f32 %f<277>; .reg .b32 %r<220>; .reg .b64 %rd<106>;`
    assert_eq!(k.regs.len(), 88 + 277 + 220 + 106);
    assert_eq!((k.regs[0].name.as_str(), k.regs[0].ty), ("%p0", Type::Pred));
    assert_eq!(
        (k.regs[88].name.as_str(), k.regs[88].ty),
        ("%f0", Type::F32)
    );
    // The first instructions: `mov.b64 %rd33, lora_shrink_f32_param_0;` at `.loc 1 55 0`, then
    // `mov.u32 %r1, %ctaid.x;` at `.loc 1 22 5, ..., inlined_at 1 55 85`, then
    // `add.s64 %rd2, %rd33, 28;` and `ld.param.u32 %r2, [lora_shrink_f32_param_0+28];`.
    let b = &k.body;
    let rd = |i: u32| Operand::Reg(lora_kernels_emulator::ptx::ir::RegId(88 + 277 + 220 + i));
    let r = |i: u32| Operand::Reg(lora_kernels_emulator::ptx::ir::RegId(88 + 277 + i));
    assert_eq!(b[0].opcode, "mov.b64");
    assert_eq!(
        b[0].operands,
        vec![rd(33), Operand::Symbol(SymbolRef::Param(0))]
    );
    assert_eq!(
        b[0].loc,
        Some(Loc {
            file: 1,
            line: 55,
            column: 0
        })
    );
    assert_eq!(
        b[1].operands,
        vec![r(1), Operand::Special(Special::Ctaid(0))]
    );
    assert_eq!(
        b[1].loc,
        Some(Loc {
            file: 1,
            line: 22,
            column: 5
        })
    );
    assert_eq!(b[2].operands, vec![rd(2), rd(33), Operand::Int(28)]);
    assert_eq!(
        b[3].operands,
        vec![
            r(2),
            Operand::Address {
                base: AddrBase::Symbol(SymbolRef::Param(0)),
                offset: 28
            }
        ]
    );
    let text = read("lora_shrink.ptx");
    assert_eq!(
        text.lines().nth(b[3].ptx_line as usize - 1).unwrap().trim(),
        "ld.param.u32 \t%r2, [lora_shrink_f32_param_0+28];"
    );
    assert_eq!(b[5].opcode, "setp.lt.s32");
    // `@%p1 bra $L__BB0_8;`
    assert_eq!(b[6].opcode, "bra");
    assert_eq!(
        b[6].guard,
        Some((lora_kernels_emulator::ptx::ir::RegId(1), false))
    );
    let Operand::Label(t) = b[6].operands[0] else {
        panic!("{:?}", b[6])
    };
    let label_line = text.lines().position(|l| l == "$L__BB0_8:").unwrap() + 1;
    // The target is the first instruction after the label's line.
    let after = b
        .iter()
        .position(|i| i.ptx_line as usize > label_line)
        .unwrap();
    assert_eq!(t as usize, after);
    let m = &mods
        .iter()
        .find(|(f, _)| *f == "lora_shrink.ptx")
        .unwrap()
        .1;
    assert!(m.file(1).unwrap().ends_with("kernels/lora_shrink.cu"));

    // lora (the fused forward): five module-scope shared flags, used by the kernels.
    let m = &mods.iter().find(|(f, _)| *f == "lora.ptx").unwrap().1;
    assert_eq!(m.vars.len(), 5);
    assert!(m
        .vars
        .iter()
        .all(|v| v.space == Space::Shared && v.ty == Type::U32 && v.size == 4 && v.align == 4));
    assert!(m.vars[0].name.ends_with("7is_last"));
    let uses_module_var = m.kernels.iter().any(|k| {
        k.body.iter().any(|i| {
            i.operands.iter().any(|o| {
                matches!(
                    o,
                    Operand::Symbol(SymbolRef::ModuleVar(_))
                        | Operand::Address {
                            base: AddrBase::Symbol(SymbolRef::ModuleVar(_)),
                            ..
                        }
                )
            })
        })
    });
    assert!(uses_module_var);
    // `.minnctapersm` where nvcc wrote it: 28 kernels.
    let n: usize = mods
        .iter()
        .map(|(_, m)| {
            m.kernels
                .iter()
                .filter(|k| k.directives.minnctapersm.is_some())
                .count()
        })
        .sum();
    assert_eq!(n, 28);
    // The scoped `{ .reg .b64 %tmp; cvta.shared.u64 ... }` blocks: each %tmp is its own register.
    let k = find("lora.ptx", "lora_forward_bm16_bf16");
    let tmps = k.regs.iter().filter(|r| r.name == "%tmp").count();
    assert!(tmps >= 2, "{tmps}");
    let cvta: Vec<_> = k
        .body
        .iter()
        .filter(|i| i.opcode == "cvta.shared.u64")
        .map(|i| i.operands[1].clone())
        .collect();
    let mut distinct = cvta.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        cvta.len(),
        "every scope's %tmp has a fresh id"
    );
    // Opcodes are verbatim.
    let all: std::collections::BTreeSet<&str> = mods
        .iter()
        .flat_map(|(_, m)| {
            m.kernels
                .iter()
                .flat_map(|k| k.body.iter().map(|i| i.opcode.as_str()))
        })
        .collect();
    for op in [
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32",
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32",
        "wmma.load.a.sync.aligned.row.m16n16k16.shared.f16",
        "shfl.sync.bfly.b32",
        "ld.global.nc.v4.u32",
        "bar.sync",
    ] {
        assert!(all.contains(op), "{op}");
    }
}

#[test]
fn parsing_is_fast() {
    let texts: Vec<String> = FILES.iter().map(|f| read(f)).collect();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    // Warm up, then time the best of three.
    let mut best = std::time::Duration::MAX;
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        for t in &texts {
            parse_ptx(t).unwrap();
        }
        best = best.min(t0.elapsed());
    }
    eprintln!(
        "parsed {bytes} bytes of PTX in {best:?} ({:.0} MB/s)",
        bytes as f64 / best.as_secs_f64() / 1e6
    );
    // The emulator crate builds at opt-level 3 even in tests; a loaded CI machine gets slack.
    assert!(best.as_secs_f64() < 2.0, "{best:?}");
}

#[test]
fn truncated_real_files_are_errors_and_never_panic() {
    let text = read("lora_shrink.ptx");
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let body_start = text.find(".visible .entry").unwrap();
    let body_end = text.rfind("\n}\n").unwrap();
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut n = body_start + 1 + (x as usize) % (body_end - body_start - 1);
        while !text.is_char_boundary(n) {
            n -= 1;
        }
        assert!(parse_ptx(&text[..n]).is_err(), "truncated at byte {n}");
    }
}

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fatbin")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fatbin's PTX parses to exactly what `nvcc -ptx` wrote for the same source (nvcc blanks the
/// comments and tabs of the embedded copy but keeps its lines), for every compression mode.
#[test]
fn fatbin_ptx_equals_nvcc_ptx() {
    let reference = parse_ptx(&String::from_utf8(data("tiny.ptx")).unwrap()).unwrap();
    assert_eq!(reference.kernels.len(), 2);
    for f in [
        "tiny_default.fatbin",
        "tiny_speed.fatbin",
        "tiny_none.fatbin",
        "tiny_multi.fatbin",
    ] {
        let ptx = ptx_from_image(&data(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(ptx.contains(".target sm_80"), "{f}");
        assert_eq!(parse_ptx(&ptx).unwrap(), reference, "{f}");
    }
    // The crate's own build of lora_shrink.cu: zstd, three kernels, SASS entries ignored.
    let ptx = ptx_from_image(&data("lora_shrink.fatbin")).unwrap();
    let m = parse_ptx(&ptx).unwrap();
    let names: Vec<_> = m.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        ["lora_shrink_f32", "lora_shrink_f16", "lora_shrink_bf16"]
    );
    assert_eq!(m.kernels[0].params[0].size, 288);
    // Plain PTX text, NUL-terminated, goes through unchanged.
    let mut text = data("tiny.ptx");
    text.push(0);
    assert_eq!(
        parse_ptx(&ptx_from_image(&text).unwrap()).unwrap(),
        reference
    );
}

#[test]
fn corrupt_fatbins_are_errors_and_never_panic() {
    let img = data("tiny_default.fatbin");
    // Truncations inside the PTX entry (the first one) fail.
    for n in (0..1000).step_by(7) {
        assert!(ptx_from_image(&img[..n]).is_err(), "truncated at {n}");
    }
    // Random corruption of the headers and the compressed payload: Ok or Err, never a panic.
    let mut x: u64 = 0xdead_beef_cafe_f00d;
    for _ in 0..3000 {
        let mut c = img.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize >> 8) % 900;
            c[i] = x as u8;
        }
        let _ = ptx_from_image(&c);
    }
}

#[test]
fn module_variables_and_local_depot_from_nvcc() {
    let m = parse_ptx(&String::from_utf8(data("forms.ptx")).unwrap()).unwrap();
    let var = |n: &str| m.vars.iter().find(|v| v.name == n).unwrap();
    let c = var("coeffs");
    assert_eq!((c.space, c.size, c.align), (Space::Const, 16, 4));
    let floats: Vec<f32> = c
        .init
        .as_ref()
        .unwrap()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(floats, [1.0, 2.0, 3.5, -1.0]);
    // `= {7, 0, 0, 0, 8, 0, 0, 0, 9}` for 12 bytes: the rest is zero.
    let t = var("table");
    assert_eq!((t.space, t.size), (Space::Global, 12));
    assert_eq!(
        t.init.as_deref(),
        Some(&[7, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0][..])
    );
    let d = var("dyn");
    assert_eq!(
        (d.space, d.size, d.is_extern, d.align),
        (Space::Shared, 0, true, 16)
    );
    let k = &m.kernels[0];
    assert_eq!(k.params.len(), 4);
    let depot = &k.vars[0];
    assert_eq!(
        (depot.space, depot.size, depot.align),
        (Space::Local, 64, 16)
    );
    assert!(k.regs.iter().any(|r| r.name == "%SPL" && r.ty == Type::B64));
    // `mov.u64 %SPL, __local_depot0;`
    assert_eq!(
        k.body[0].operands[1],
        Operand::Symbol(SymbolRef::KernelVar(0))
    );
    let ops: std::collections::BTreeSet<&str> = k.body.iter().map(|i| i.opcode.as_str()).collect();
    for op in [
        "vote.sync.ballot.b32",
        "shfl.sync.bfly.b32",
        "ld.global.nc.v4.f32",
        "nanosleep.u32",
        "bar.sync",
    ] {
        assert!(ops.contains(op), "{op} in {ops:?}");
    }
}

/// Every instruction has as many operands as its source line has top-level comma-separated parts
/// (commas inside `{...}` and `[...]` do not count), and vectors as many elements as written.
#[test]
fn operand_counts_match_the_source_lines() {
    for (f, m) in parse_all() {
        let text = read(f);
        let lines: Vec<&str> = text.lines().collect();
        for k in &m.kernels {
            for ins in &k.body {
                let line = lines[ins.ptx_line as usize - 1];
                let line = line.split("//").next().unwrap().trim();
                let line = line.trim_start_matches('{').trim();
                let stmt = line.split(';').next().unwrap().trim();
                let stmt = if stmt.starts_with('@') {
                    stmt.split_once(char::is_whitespace).unwrap().1.trim()
                } else {
                    stmt
                };
                let (opcode, rest) = stmt.split_once(char::is_whitespace).unwrap_or((stmt, ""));
                assert_eq!(opcode, ins.opcode, "{f}:{}", ins.ptx_line);
                let (mut parts, mut depth, mut vec_elems) = (0usize, 0i32, Vec::new());
                let mut cur_vec = 0usize;
                if !rest.trim().is_empty() {
                    parts = 1;
                }
                for c in rest.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            cur_vec = 1;
                        }
                        '}' => {
                            depth -= 1;
                            vec_elems.push(cur_vec);
                        }
                        '[' => depth += 1,
                        ']' => depth -= 1,
                        ',' if depth == 0 => parts += 1,
                        ',' if rest.contains('{') => cur_vec += 1,
                        _ => {}
                    }
                }
                assert_eq!(ins.operands.len(), parts, "{f}:{}: {stmt}", ins.ptx_line);
                let parsed_vecs: Vec<usize> = ins
                    .operands
                    .iter()
                    .filter_map(|o| match o {
                        Operand::Vector(v) => Some(v.len()),
                        _ => None,
                    })
                    .collect();
                assert_eq!(parsed_vecs, vec_elems, "{f}:{}: {stmt}", ins.ptx_line);
            }
        }
    }
}
