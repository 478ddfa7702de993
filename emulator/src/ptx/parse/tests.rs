//! Parser tests on hand-written PTX.
use super::*;

const HEADER: &str = ".version 9.0\n.target sm_80\n.address_size 64\n";

fn parse(body: &str) -> Result<Module, ParseError> {
    parse_ptx(&format!("{HEADER}{body}"))
}

fn kernel(body: &str) -> Kernel {
    let m = parse(body).unwrap_or_else(|e| panic!("{e}"));
    m.kernels.into_iter().next().expect("one kernel")
}

fn err(body: &str) -> String {
    match parse(body) {
        Ok(_) => panic!("expected an error for:\n{body}"),
        Err(e) => e.to_string(),
    }
}

fn reg(k: &Kernel, name: &str) -> RegId {
    let i = k.regs.iter().rposition(|r| r.name == name).expect(name);
    RegId(i as u32)
}

#[test]
fn header_and_files() {
    let m = parse_ptx(
        "// comment\n.version 8.7\n.target sm_80, texmode_independent\n.address_size 64\n\
         .file 1 \"/a/b.cu\"\n.file 2 \"c.h\", 1700000000, 1234\n",
    )
    .unwrap();
    assert_eq!(m.version, (8, 7));
    assert_eq!(m.target, vec!["sm_80", "texmode_independent"]);
    assert_eq!(m.address_size, 64);
    assert_eq!(m.file(1), Some("/a/b.cu"));
    assert_eq!(m.file(2), Some("c.h"));
    assert_eq!(m.file(3), None);
    assert!(m.kernels.is_empty());
}

#[test]
fn entry_params_and_directives() {
    let m = parse(
        ".visible .entry k(\n\t.param .align 8 .b8 k_param_0[288],\n\t.param .u64 k_param_1,\n\
         \t.param .f32 k_param_2,\n\t.param .u64 .ptr .global .align 16 k_param_3\n)\n\
         .maxntid 256, 1, 1\n.reqntid 128\n.minnctapersm 2\n.maxnreg 64\n{\n\tret;\n}\n\
         .entry e {\n exit;\n}\n",
    )
    .unwrap();
    let k = &m.kernels[0];
    assert_eq!(k.name, "k");
    assert_eq!(k.ptx_line, 4);
    let p: Vec<_> = k
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.ty, p.align, p.size))
        .collect();
    assert_eq!(
        p,
        vec![
            ("k_param_0", Type::B8, 8, 288),
            ("k_param_1", Type::U64, 8, 8),
            ("k_param_2", Type::F32, 4, 4),
            ("k_param_3", Type::U64, 8, 8),
        ]
    );
    assert_eq!(k.directives.maxntid, Some([256, 1, 1]));
    assert_eq!(k.directives.reqntid, Some([128, 1, 1]));
    assert_eq!(k.directives.minnctapersm, Some(2));
    assert_eq!(k.directives.maxnreg, Some(64));
    assert_eq!(m.kernels[1].name, "e");
    assert!(m.kernels[1].params.is_empty());
    assert_eq!(m.kernels[1].body[0].opcode, "exit");
}

#[test]
fn labels_resolve_to_the_next_instruction() {
    let k = kernel(
        ".entry k()\n{\n.reg .pred %p<2>;\n$L0:\n\tbra $L2;\n$L1:\n\
         \t@%p1 bra.uni $L0;\n\t@!%p0 bra $L1;\n$L2:\n$L3:\n\tret;\n\tbra $L4;\n$L4:\n}\n",
    );
    let targets: Vec<_> = k.body.iter().map(|i| i.operands.first().cloned()).collect();
    assert_eq!(
        targets,
        vec![
            Some(Operand::Label(3)),
            Some(Operand::Label(0)),
            Some(Operand::Label(1)),
            None,
            Some(Operand::Label(5)), // a label at the very end: body.len()
        ]
    );
    assert_eq!(k.body.len(), 5);
    assert_eq!(k.body[1].guard, Some((reg(&k, "%p1"), false)));
    assert_eq!(k.body[2].guard, Some((reg(&k, "%p0"), true)));
    assert_eq!(k.body[1].opcode, "bra.uni");
    assert_eq!(k.body[0].ptx_line, 8);
}

#[test]
fn scopes_shadow_and_end() {
    let k = kernel(
        ".entry k()\n{\n\t.reg .b32 %r<4>;\n\t.reg .b64 %rd1;\n\
         \tmov.u32 %r1, 1;\n\
         \t{ .reg .b64 %r1;\n\t  mov.b64 %r1, %rd1; mov.u32 %r2, 2; }\n\
         \tmov.u32 %r1, 3;\n\
         \t{ .reg .b64 %tmp;\n\t  cvta.shared.u64 %rd1, %tmp; }\n\
         \t{ .reg .b64 %tmp;\n\t  cvta.shared.u64 %rd1, %tmp; }\n\
         \t{ mov.b32 %r3, {0,%r2};}\n\
         \tret;\n}\n",
    );
    let outer_r1 = RegId(1);
    assert_eq!(k.regs[1].name, "%r1");
    assert_eq!(k.regs[1].ty, Type::B32);
    // Outer %r<4> = 0..3, %rd1 = 4, inner %r1 = 5, the two %tmp = 6 and 7.
    assert_eq!(k.regs.len(), 8);
    assert_eq!(k.regs[5].name, "%r1");
    assert_eq!(k.regs[5].ty, Type::B64);
    let b = &k.body;
    assert_eq!(b[0].operands[0], Operand::Reg(outer_r1));
    assert_eq!(
        b[1].operands,
        vec![Operand::Reg(RegId(5)), Operand::Reg(RegId(4))]
    );
    assert_eq!(b[2].operands[0], Operand::Reg(RegId(2))); // outer %r2 seen inside
    assert_eq!(b[3].operands[0], Operand::Reg(outer_r1)); // the shadow is gone
    assert_eq!(b[4].operands[1], Operand::Reg(RegId(6)));
    assert_eq!(b[5].operands[1], Operand::Reg(RegId(7))); // fresh id per scope
    assert_eq!(
        b[6].operands,
        vec![
            Operand::Reg(RegId(3)),
            Operand::Vector(vec![Operand::Int(0), Operand::Reg(RegId(2))])
        ]
    );
    // A name declared only inside a scope is unknown after it.
    let e = err(".entry k()\n{\n{ .reg .b64 %tmp; }\nmov.b64 %tmp, 0;\n}\n");
    assert!(
        e.contains("undeclared register `%tmp`") && e.contains("line 7"),
        "{e}"
    );
    // Out-of-range and leading-zero names are not declared by a range.
    assert!(err(".entry k()\n{\n.reg .b32 %r<4>;\nmov.b32 %r4, 0;\n}\n").contains("%r4"));
    assert!(err(".entry k()\n{\n.reg .b32 %r<4>;\nmov.b32 %r01, 0;\n}\n").contains("%r01"));
    // Duplicates in one scope.
    assert!(err(".entry k()\n{\n.reg .b32 %r<4>;\n.reg .b32 %r2;\n}\n").contains("twice"));
    assert!(err(".entry k()\n{\n.reg .b32 %r2;\n.reg .b32 %r<4>;\n}\n").contains("twice"));
    assert!(err(".entry k()\n{\n.reg .b32 %a, %a;\n}\n").contains("twice"));
}

#[test]
fn every_operand_form() {
    let k = kernel(
        ".visible .entry k(.param .u64 k_param_0)\n{\n\
         .reg .pred %p<3>;\n.reg .b32 %r<5>;\n.reg .b64 %rd<3>;\n.reg .f32 %f1;\n.reg .f64 %fd1;\n\
         .shared .align 16 .b8 tile[4096];\n\
         mov.u32 %r1, %tid.x;\n\
         mov.u32 %r1, %ctaid.y;\n\
         mov.u32 %r1, %ntid.z;\n\
         mov.u32 %r1, %nctaid.x;\n\
         mov.u32 %r1, %laneid;\n\
         mov.u32 %r1, %warpid;\n\
         mov.u32 %r1, %smid;\n\
         mov.u32 %r1, %lanemask_lt;\n\
         mov.u64 %rd1, %clock64;\n\
         add.s32 %r1, %r2, -1;\n\
         and.b32 %r1, %r2, 0x7fU;\n\
         and.b32 %r1, %r2, 0xFFFFFFFFFFFFFFFF;\n\
         or.b32 %r1, %r2, 017;\n\
         or.b32 %r1, %r2, 0b101;\n\
         mov.f32 %f1, 0f3F800000;\n\
         mov.f32 %f1, -0f3F800000;\n\
         mov.f64 %fd1, 0d3FF0000000000000;\n\
         mov.f64 %fd1, 1.5;\n\
         shfl.sync.bfly.b32 %r1|%p1, %r2, 1, 31, -1;\n\
         selp.b32 %r1, 1, 0, !%p2;\n\
         ld.global.nc.v4.u32 {%r1,%r2,%r3,%r4}, [%rd1];\n\
         mov.b64 {%r1, _}, %rd2;\n\
         ld.param.u32 %r1, [k_param_0+28];\n\
         ld.global.u32 %r1, [%rd1+16];\n\
         ld.global.u32 %r1, [%rd1+-24];\n\
         ld.global.u32 %r1, [%rd1-8];\n\
         ld.shared.u32 %r1, [tile];\n\
         ld.shared.u32 %r1, [tile+28];\n\
         ld.global.u32 %r1, [0x100];\n\
         mov.b64 %rd1, k_param_0;\n\
         mov.u32 %r1, tile;\n\
         bar.sync 0;\n\
         membar.gl;\n\
         ret;\n}\n",
    );
    use Operand::*;
    let ops: Vec<&Vec<Operand>> = k.body.iter().map(|i| &i.operands).collect();
    let r = |n: &str| reg(&k, n);
    let sp = |s| vec![Reg(r("%r1")), Special(s)];
    assert_eq!(*ops[0], sp(super::Special::Tid(0)));
    assert_eq!(*ops[1], sp(super::Special::Ctaid(1)));
    assert_eq!(*ops[2], sp(super::Special::Ntid(2)));
    assert_eq!(*ops[3], sp(super::Special::Nctaid(0)));
    assert_eq!(*ops[4], sp(super::Special::LaneId));
    assert_eq!(*ops[5], sp(super::Special::WarpId));
    assert_eq!(*ops[6], sp(super::Special::SmId));
    assert_eq!(*ops[7], sp(super::Special::LaneMaskLt));
    assert_eq!(ops[8][1], Special(super::Special::Clock64));
    assert_eq!(ops[9][2], Int(-1));
    assert_eq!(ops[10][2], Int(0x7f));
    assert_eq!(ops[11][2], Int(-1));
    assert_eq!(ops[12][2], Int(15));
    assert_eq!(ops[13][2], Int(5));
    assert_eq!(ops[14][1], F32(0x3F80_0000));
    assert_eq!(ops[15][1], F32(0xBF80_0000));
    assert_eq!(ops[16][1], F64(0x3FF0_0000_0000_0000));
    assert_eq!(ops[17][1], F64(1.5f64.to_bits()));
    assert_eq!(
        *ops[18],
        vec![
            RegPair(r("%r1"), r("%p1")),
            Reg(r("%r2")),
            Int(1),
            Int(31),
            Int(-1)
        ]
    );
    assert_eq!(ops[19][3], NotReg(r("%p2")));
    assert_eq!(
        ops[20][0],
        Vector(vec![
            Reg(r("%r1")),
            Reg(r("%r2")),
            Reg(r("%r3")),
            Reg(r("%r4"))
        ])
    );
    assert_eq!(
        ops[20][1],
        Address {
            base: AddrBase::Reg(r("%rd1")),
            offset: 0
        }
    );
    assert_eq!(ops[21][0], Vector(vec![Reg(r("%r1")), Sink]));
    let param = AddrBase::Symbol(SymbolRef::Param(0));
    let tile = SymbolRef::KernelVar(0);
    assert_eq!(
        ops[22][1],
        Address {
            base: param,
            offset: 28
        }
    );
    assert_eq!(
        ops[23][1],
        Address {
            base: AddrBase::Reg(r("%rd1")),
            offset: 16
        }
    );
    assert_eq!(
        ops[24][1],
        Address {
            base: AddrBase::Reg(r("%rd1")),
            offset: -24
        }
    );
    assert_eq!(
        ops[25][1],
        Address {
            base: AddrBase::Reg(r("%rd1")),
            offset: -8
        }
    );
    assert_eq!(
        ops[26][1],
        Address {
            base: AddrBase::Symbol(tile),
            offset: 0
        }
    );
    assert_eq!(
        ops[27][1],
        Address {
            base: AddrBase::Symbol(tile),
            offset: 28
        }
    );
    assert_eq!(
        ops[28][1],
        Address {
            base: AddrBase::Absolute,
            offset: 0x100
        }
    );
    assert_eq!(ops[29][1], Symbol(SymbolRef::Param(0)));
    assert_eq!(ops[30][1], Symbol(tile));
    assert_eq!(*ops[31], vec![Int(0)]);
    assert!(ops[32].is_empty());
    assert_eq!(k.body[32].opcode, "membar.gl");
    assert!(ops[33].is_empty());
    let v = &k.vars[0];
    assert_eq!(
        (v.name.as_str(), v.space, v.ty, v.align, v.size, v.is_extern),
        ("tile", Space::Shared, Type::B8, 16, 4096, false)
    );
}

#[test]
fn loc_is_the_first_position_and_inlined_at_goes_to_the_call_sites() {
    let k = kernel(
        ".entry k()\n{\n\tnop;\n\t.loc\t1 56 82\n\tnop;\n\
         \t.loc\t1 22 5, function_name $L__info_string0, inlined_at 1 56 82\n\tnop;\n\
         \t.loc 2 7 0\n\tnop;\n}\n",
    );
    let locs: Vec<_> = k.body.iter().map(|i| i.loc).collect();
    let l = |file, line, column| Some(Loc { file, line, column });
    assert_eq!(locs, vec![None, l(1, 56, 82), l(1, 22, 5), l(2, 7, 0)]);
    let m = parse(
        ".entry k()\n{\n\tnop;\n\t.loc\t1 56 82\n\tnop;\n\
         \t.loc\t1 22 5, function_name $L__info_string0, inlined_at 1 56 82\n\tnop;\n\
         \t.loc 2 7 0\n\tnop;\n}\n",
    )
    .unwrap();
    assert_eq!(m.call_sites, vec![vec![None, None, l(1, 56, 82), None]]);
    // The next kernel starts without a loc.
    let m = parse(".entry a()\n{\n.loc 1 2 3\nret;\n}\n.entry b()\n{\nret;\n}\n").unwrap();
    assert_eq!(m.kernels[0].body[0].loc, l(1, 2, 3));
    assert_eq!(m.kernels[1].body[0].loc, None);
}

#[test]
fn module_variables_pragmas_and_sections() {
    let m = parse(
        ".global .align 4 .u32 counter;\n\
         .global .align 4 .b8 table[8] = {1, 2, 3};\n\
         .const .align 4 .f32 coeffs[3] = {0f3F800000, 2, -1.5};\n\
         .global .s16 pair[] = {-1, 0x7fff};\n\
         .extern .shared .align 16 .b8 dyn_smem[];\n\
         .shared .align 4 .u32 flag;\n\
         .visible .entry k()\n.pragma \"nounroll\";\n{\n\
         .reg .b64 %rd<2>;\n.reg .b32 %r1;\n\
         \t.pragma \"used_bytes_mask 15\";\n\
         mov.u64 %rd1, counter;\n\
         ld.shared.u32 %r1, [flag+0];\n\
         ld.shared.u32 %r1, [dyn_smem+4];\n\
         ret;\n}\n\
         \t.section\t.debug_str\n\t{\n$L__info_string0:\n.b8 95,90,0\n}\n",
    )
    .unwrap();
    let v = &m.vars;
    assert_eq!(v.len(), 6);
    assert_eq!(
        (v[0].space, v[0].ty, v[0].size, v[0].align),
        (Space::Global, Type::U32, 4, 4)
    );
    assert_eq!(v[0].init, None);
    assert_eq!(v[1].init, Some(vec![1, 2, 3, 0, 0, 0, 0, 0]));
    let mut c = Vec::new();
    for x in [1.0f32, 2.0, -1.5] {
        c.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!((v[2].space, v[2].size), (Space::Const, 12));
    assert_eq!(v[2].init, Some(c));
    assert_eq!(v[3].size, 4);
    assert_eq!(v[3].init, Some(vec![0xff, 0xff, 0xff, 0x7f]));
    assert_eq!(
        (v[4].space, v[4].size, v[4].is_extern, v[4].align),
        (Space::Shared, 0, true, 16)
    );
    let k = &m.kernels[0];
    assert_eq!(
        k.body[0].operands[1],
        Operand::Symbol(SymbolRef::ModuleVar(0))
    );
    assert_eq!(
        k.body[1].operands[1],
        Operand::Address {
            base: AddrBase::Symbol(SymbolRef::ModuleVar(5)),
            offset: 0
        }
    );
    assert_eq!(
        k.body[2].operands[1],
        Operand::Address {
            base: AddrBase::Symbol(SymbolRef::ModuleVar(4)),
            offset: 4
        }
    );
    assert_eq!(k.body.len(), 4);
}

#[test]
fn double_colon_qualifiers_stay_in_the_opcode() {
    let k = kernel(
        ".entry k()\n{\n.reg .b32 %r<2>;\n.reg .b64 %rd1;\n\
         ld.global.nc.L1::no_allocate.v2.u32 {%r0, %r1}, [%rd1];\n\
         ld.shared::cta.u32 %r0, [%rd1+4];\nret;\n}\n",
    );
    assert_eq!(k.body[0].opcode, "ld.global.nc.L1::no_allocate.v2.u32");
    assert_eq!(k.body[1].opcode, "ld.shared::cta.u32");
    assert_eq!(
        k.body[1].operands[1],
        Operand::Address {
            base: AddrBase::Reg(RegId(2)),
            offset: 4
        }
    );
}

#[test]
fn block_comments_and_odd_spacing() {
    let k = kernel(
        "/* a\n block */ .entry k ( ) { .reg .b32 %r<2> ; /* x */ add.s32 %r1 , %r0 , 1 ; // y\n ret ; }",
    );
    assert_eq!(k.body.len(), 2);
    assert_eq!(k.body[0].ptx_line, 5);
    assert_eq!(k.body[0].operands[2], Operand::Int(1));
}

#[test]
fn rejected_constructs_name_themselves() {
    let cases: &[(&str, &str)] = &[
        (".func foo(.param .b32 a)\n{\nret;\n}\n", "`.func foo`"),
        (
            ".visible .func (.param .b32 r) bar()\n{\nret;\n}\n",
            "`.func bar`",
        ),
        (".extern .func vprintf(.param .b64 a);\n", "`.func vprintf`"),
        (".entry k()\n{\ncall foo;\n}\n", "`call`"),
        (".entry k()\n{\ncall.uni (r), foo, (a);\n}\n", "`call`"),
        (".entry k()\n{\n.param .b32 p;\n}\n", "`.param` inside"),
        (".entry k()\n{\n.reg .v4 .f32 %v;\n}\n", "vector registers"),
        (".alias a, b;\n", "`.alias`"),
        (
            ".entry k()\n.explicitcluster\n{\nret;\n}\n",
            "`.explicitcluster`",
        ),
        (".entry k()\n{\n.weird 1;\n}\n", "`.weird`"),
        (".entry k()\n{\nbra $Lnowhere;\n}\n", "`$Lnowhere`"),
        (".entry k()\n{\n$L1:\n$L1:\nret;\n}\n", "defined twice"),
        (
            ".entry k()\n{\nmov.u32 %r1, 0;\n}\n",
            "undeclared register `%r1`",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\n@%r1 ret;\n}\n",
            "not a predicate",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\nmov.f32 %r1, 0f3F80;\n}\n",
            "malformed number",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\nmov.u32 %r1, 09;\n}\n",
            "malformed number",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\nmov.u32 %r1, %tid;\n}\n",
            "`%tid`",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\nld.u32 %r1, [nosuch];\n}\n",
            "unknown symbol",
        ),
        (
            ".entry k()\n{\n.reg .b32 %r1;\nadd.u32 %r1 %r1;\n}\n",
            "expected `,` or `;`",
        ),
        (".entry k()\n{\nret;\n", "not closed"),
        (
            ".entry k()\n{\nret;\n}\n.entry k()\n{\nret;\n}\n",
            "defined twice",
        ),
        (".global .u32 x[];\n", "unsized array"),
        (".global .b8 x[2] = {1,2,3};\n", "3 initialisers"),
        (
            ".entry k()\n{\n.reg .b32 %r<2000000>;\n}\n",
            "too many registers",
        ),
        (".entry k()\n{\n.reg .b32 %r1<4>;\n}\n", "ending in a digit"),
        (".entry k()\n{\nret;\n}\n#", "unexpected character '#'"),
        (
            ".entry k()\n{\nret; /* open\n}\n",
            "unterminated /* comment",
        ),
    ];
    for (src, want) in cases {
        let e = err(src);
        assert!(e.contains(want), "{src:?}: got {e:?}, want {want:?}");
    }
    // Errors carry the line and quote it.
    let e = parse(".entry k()\n{\n\tfrobnicate %r9;\n}\n").unwrap_err();
    assert_eq!(e.line, 6);
    assert!(e.message.contains("`frobnicate %r9;`"), "{}", e.message);
    assert!(e.message.contains("(kernel `k`)"), "{}", e.message);
    // Module structure.
    assert!(parse_ptx("").unwrap_err().message.contains(".version"));
    assert!(parse_ptx(".target sm_80\n")
        .unwrap_err()
        .message
        .contains(".version"));
    assert!(parse_ptx(".version 9.0\n.entry k()\n{\nret;\n}\n").is_err());
    assert!(parse_ptx(".version 9\n.target sm_80\n").is_err());
}

#[test]
fn register_names_without_percent() {
    // The PTX ISA's identifiers: `[a-zA-Z][a-zA-Z0-9_$]*` or `[_$%][a-zA-Z0-9_$]+`.
    let m = parse(
        ".global .u32 gq;\n\
         .visible .entry plain_names(.param .u64 out)\n{\n\
         .reg .b32 q, r_1, $x, add, gq;\n.reg .b64 addr;\n.reg .pred p;\n.reg .b32 v<3>;\n\
         ld.param.u64 addr, [out];\n\
         cvta.to.global.u64 addr, addr;\n\
         mov.u32 q, 41;\n\
         add.u32 r_1, q, 1;\n\
         setp.eq.u32 p, r_1, 42;\n\
         @p st.global.u32 [addr], r_1;\n\
         { .reg .pred p; setp.ne.u32 p, q, 41; @!p st.global.u32 [addr+4], q; }\n\
         @p bra done;\n\
         shfl.sync.idx.b32 v0|p, q, 0, 31, -1;\n\
         selp.b32 v1, 1, 0, !p;\n\
         st.global.v2.u32 [addr-8], {v2, _};\n\
         add.u32 add, add, $x;\n\
         mov.u32 gq, gq;\n\
         mov.b64 addr, out;\n\
         done:\n\
         ret;\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let k = &m.kernels[0];
    use Operand::*;
    let r = |n: &str| reg(k, n);
    let names: Vec<_> = k.regs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["q", "r_1", "$x", "add", "gq", "addr", "p", "v0", "v1", "v2", "p"]
    );
    let outer_p = RegId(6);
    let inner_p = RegId(10);
    let b = &k.body;
    let addr = |offset| Address {
        base: AddrBase::Reg(r("addr")),
        offset,
    };
    assert_eq!(
        b[0].operands,
        vec![
            Reg(r("addr")),
            Address {
                base: AddrBase::Symbol(SymbolRef::Param(0)),
                offset: 0
            }
        ]
    );
    assert_eq!(b[1].operands, vec![Reg(r("addr")), Reg(r("addr"))]);
    assert_eq!(b[3].operands, vec![Reg(r("r_1")), Reg(r("q")), Int(1)]);
    assert_eq!(b[5].guard, Some((outer_p, false)));
    assert_eq!(b[5].operands, vec![addr(0), Reg(r("r_1"))]);
    // The inner scope's p is a fresh register, and gone after the scope.
    assert_eq!(b[6].operands[0], Reg(inner_p));
    assert_eq!(b[7].guard, Some((inner_p, true)));
    assert_eq!(b[7].operands, vec![addr(4), Reg(r("q"))]);
    assert_eq!(b[8].guard, Some((outer_p, false)));
    assert_eq!(b[8].operands, vec![Label(15)]);
    assert_eq!(b[9].operands[0], RegPair(r("v0"), outer_p));
    assert_eq!(b[10].operands[3], NotReg(outer_p));
    assert_eq!(
        b[11].operands,
        vec![addr(-8), Vector(vec![Reg(r("v2")), Sink])]
    );
    // A register may be named like an opcode, and shadows a module variable of its name.
    assert_eq!(b[12].opcode, "add.u32");
    assert_eq!(
        b[12].operands,
        vec![Reg(r("add")), Reg(r("add")), Reg(r("$x"))]
    );
    assert_eq!(b[13].operands, vec![Reg(r("gq")), Reg(r("gq"))]);
    // Symbols are still symbols.
    assert_eq!(b[14].operands[1], Symbol(SymbolRef::Param(0)));
    assert_eq!(b.len(), 16);

    // Ambiguous or malformed names are errors.
    let cases: &[(&str, &str)] = &[
        (
            ".entry k(.param .u64 out)\n{\n.reg .b64 out;\nret;\n}\n",
            "register `out` has the name of a parameter",
        ),
        (
            ".entry k()\n{\n.shared .b8 s[4];\n.reg .b32 s;\nret;\n}\n",
            "register `s` has the name of a parameter or variable",
        ),
        (
            ".entry k()\n{\n.reg .b32 s;\n.shared .b8 s[4];\nret;\n}\n",
            "variable `s` has the name of a register",
        ),
        (
            ".entry k()\n{\n.reg .b32 q;\nq:\nret;\n}\n",
            "label `q` has the name of a register",
        ),
        (
            ".entry k()\n{\n.reg .b32 _;\nret;\n}\n",
            "bad register name `_`",
        ),
        (
            ".entry k()\n{\n.reg .b32 a.b;\nret;\n}\n",
            "bad register name",
        ),
        (".entry k()\n{\n.reg .b32 q, q;\nret;\n}\n", "twice"),
        (
            ".entry k()\n{\n.reg .b32 q;\n{ .reg .b32 t; }\nmov.b32 q, t;\n}\n",
            "unknown label or symbol `t`",
        ),
        (
            ".entry k()\n{\n.reg .b32 q;\nmov.b32 {q, t}, 0;\n}\n",
            "undeclared register `t`",
        ),
        (
            ".entry k()\n{\n.reg .b32 q;\nld.u32 q, [nosuch];\n}\n",
            "unknown symbol or register `nosuch`",
        ),
        (
            ".entry k()\n{\n.reg .b32 q;\n@q ret;\n}\n",
            "guard `q` is not a predicate",
        ),
        (".entry k()\n{\n@p ret;\n}\n", "undeclared register `p`"),
    ];
    for (src, want) in cases {
        let e = err(src);
        assert!(e.contains(want), "{src:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn inlined_at_chains_follow_each_call_site_to_its_own_loc() {
    // As nvcc nests it (see ptx/lora.ptx): the kernel's line 574 calls a function at
    // line 518, which calls one at line 83, which calls a header function (file 2).
    let m = parse(
        ".entry k()\n{\n\
         .loc 1 574 85\nnop;\n\
         .loc 1 518 5, function_name $L__info_string0, inlined_at 1 574 85\nnop;\n\
         .loc 1 83 9, function_name $L__info_string1, inlined_at 1 518 5\nnop;\nnop;\n\
         .loc 2 373 9, function_name $L__info_string2+4, inlined_at 1 83 9\nnop;\n\
         .loc 1 0 5\nnop;\n\
         .loc 1 600 3\n\
         .loc 1 518 5, function_name $L__info_string0, inlined_at 1 600 3\n\
         .loc 1 83 9, function_name $L__info_string1, inlined_at 1 518 5\nnop;\n\
         .loc 1 7 7, function_name $L__info_string3, inlined_at 1 999 1\nnop;\n\
         ret;\n}\n\
         .entry k2()\n{\n\
         .loc 1 83 9, function_name $L__info_string1, inlined_at 1 518 5\nret;\n}\n",
    )
    .unwrap();
    let l = |file, line, column| Loc { file, line, column };
    let chains: Vec<Option<Vec<Loc>>> = m.inline_chains[0]
        .iter()
        .map(|c| c.as_deref().map(<[Loc]>::to_vec))
        .collect();
    let (c574, c518, c83, c600) = (l(1, 574, 85), l(1, 518, 5), l(1, 83, 9), l(1, 600, 3));
    assert_eq!(
        chains,
        vec![
            None,
            Some(vec![c574]),
            Some(vec![c518, c574]),
            Some(vec![c518, c574]),
            Some(vec![c83, c518, c574]),
            None,
            // The same function inlined at another call site: the latest `.loc` counts.
            Some(vec![c518, c600]),
            // A call site without a `.loc` of its own ends the chain.
            Some(vec![l(1, 999, 1)]),
            Some(vec![l(1, 999, 1)]),
        ]
    );
    assert_eq!(
        m.call_sites[0],
        chains
            .iter()
            .map(|c| c.as_ref().map(|c| c[0]))
            .collect::<Vec<_>>()
    );
    // The instructions of one `.loc` share its chain.
    let c = &m.inline_chains[0];
    assert!(std::sync::Arc::ptr_eq(
        c[2].as_ref().unwrap(),
        c[3].as_ref().unwrap()
    ));
    // One entry per kernel and instruction; each kernel starts afresh.
    assert_eq!(m.call_sites.len(), 2);
    assert_eq!(m.inline_chains.len(), 2);
    for (i, k) in m.kernels.iter().enumerate() {
        assert_eq!(m.call_sites[i].len(), k.body.len());
        assert_eq!(m.inline_chains[i].len(), k.body.len());
    }
    assert_eq!(m.inline_chains[1][0].as_deref(), Some(&[c518][..]));
    assert_eq!(m.kernels[1].body[0].loc, Some(c83));

    // A `.loc` that names itself as its call site does not grow a chain without bound.
    let mut body = String::from(".entry k()\n{\n");
    for _ in 0..200 {
        body.push_str(".loc 1 1 1, function_name $L__info_string0, inlined_at 1 1 1\nnop;\n");
    }
    body.push_str("}\n");
    let m = parse(&body).unwrap();
    let last = m.inline_chains[0].last().unwrap().as_ref().unwrap();
    assert_eq!(last.len(), MAX_INLINE_DEPTH);
    assert!(last.iter().all(|&c| c == l(1, 1, 1)));

    // Malformed `inlined_at`s are errors.
    for (src, want) in [
        (
            ".entry k()\n{\n.loc 1 2 3, inlined_at 1 2\nret;\n}\n",
            "expected an `inlined_at` column",
        ),
        (
            ".entry k()\n{\n.loc 1 2 3, inlined_at 1 99999999999 2\nret;\n}\n",
            "too large",
        ),
        (
            ".entry k()\n{\n.loc 1 2 3, inlined_to 1 2 3\nret;\n}\n",
            "unknown `.loc` attribute",
        ),
    ] {
        let e = err(src);
        assert!(e.contains(want), "{src:?}: got {e:?}, want {want:?}");
    }
}

/// The `.loc` lines of the PTX text: (PTX line, position, inlined_at), in order.
fn loc_lines(text: &str) -> Vec<(u32, Loc, Option<Loc>)> {
    let num = |s: Option<&str>| s.and_then(|s| s.trim_matches(',').parse::<u32>().ok());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.trim().strip_prefix(".loc") else {
            continue;
        };
        let mut w = rest.split_whitespace();
        let pos = |w: &mut std::str::SplitWhitespace| {
            Some(Loc {
                file: num(w.next())?,
                line: num(w.next())?,
                column: num(w.next())?,
            })
        };
        let at = pos(&mut w).unwrap();
        let inl = rest
            .split_once("inlined_at")
            .map(|(_, t)| pos(&mut t.split_whitespace()).unwrap());
        out.push((i as u32 + 1, at, inl));
    }
    out
}

#[test]
fn inline_chains_of_nvcc_ptx_are_consistent_with_its_loc_lines() {
    // Every link of every chain is a `.loc` of the text (position -> its inlined_at), the
    // first link is the instruction's own `.loc`'s inlined_at, and the outermost call site is
    // a `.loc` of the kernel's own body (no inlined_at).
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut files: Vec<String> = [
        "dora",
        "int8",
        "linear",
        "lora",
        "lora_shrink",
        "mixed_batch",
        "quant4",
    ]
    .iter()
    .map(|f| format!("{root}/ptx/{f}.ptx"))
    .collect();
    files.push(format!("{root}/emulator/tests/kernels/broken.ptx"));
    let mut deepest = 0;
    let mut inlined = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let m = parse_ptx(&text).unwrap();
        let locs = loc_lines(&text);
        for (ki, k) in m.kernels.iter().enumerate() {
            let end = m.kernels.get(ki + 1).map_or(u32::MAX, |n| n.ptx_line);
            let mine: Vec<_> = locs
                .iter()
                .filter(|(line, _, _)| *line > k.ptx_line && *line < end)
                .collect();
            type Key = (u32, u32, u32);
            let key = |l: Loc| (l.file, l.line, l.column);
            let links: std::collections::HashSet<(Key, Option<Key>)> = mine
                .iter()
                .map(|&&(_, a, b)| (key(a), b.map(key)))
                .collect();
            for (ii, inst) in k.body.iter().enumerate() {
                let own = mine
                    .iter()
                    .rev()
                    .find(|(line, _, _)| *line < inst.ptx_line)
                    .map(|&&(_, a, b)| (a, b));
                assert_eq!(inst.loc, own.map(|o| o.0), "{path}:{}", inst.ptx_line);
                let chain = m.inline_chains[ki][ii].as_deref().unwrap_or(&[]);
                assert_eq!(chain.first().copied(), own.and_then(|o| o.1));
                assert_eq!(m.call_sites[ki][ii], chain.first().copied());
                for w in chain.windows(2) {
                    assert!(
                        links.contains(&(key(w[0]), Some(key(w[1])))),
                        "{path}:{}",
                        inst.ptx_line
                    );
                }
                if let Some(&outer) = chain.last() {
                    assert!(
                        links.contains(&(key(outer), None)),
                        "{path}:{}",
                        inst.ptx_line
                    );
                    inlined += 1;
                }
                deepest = deepest.max(chain.len());
            }
        }
        if path.ends_with("broken.ptx") {
            // The shfl of `shfl_exited_lanes`: sm_30_intrinsics.hpp:373 inlined at broken.cu:89.
            let k = m
                .kernels
                .iter()
                .position(|k| k.name.contains("shfl_exited_lanes"))
                .unwrap();
            let i = m.kernels[k]
                .body
                .iter()
                .position(|i| i.opcode.starts_with("shfl.sync"))
                .unwrap();
            let site = m.call_sites[k][i].unwrap();
            assert_eq!((site.line, site.column), (89, 5));
            assert!(m.file(site.file).unwrap().ends_with("broken.cu"));
            let inner = m.kernels[k].body[i].loc.unwrap();
            assert!(m
                .file(inner.file)
                .unwrap()
                .ends_with("sm_30_intrinsics.hpp"));
        }
    }
    // nvcc nests up to 8 deep in the crate's kernels.
    assert_eq!(deepest, 8);
    assert!(inlined > 50_000, "{inlined}");
}

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SAMPLE: &str = ".version 9.0\n.target sm_80\n.address_size 64\n\
    .global .align 4 .b8 t[4] = {1,2};\n\
    .visible .entry k(\n.param .align 8 .b8 k_param_0[16],\n.param .u64 k_param_1\n)\n\
    .maxntid 64, 1, 1\n{\n.reg .pred %p<2>;\n.reg .b32 %r<8>;\n.reg .b64 %rd<4>;\n\
    .shared .align 16 .b8 s[256];\n.loc 1 2 3\nmov.u32 %r1, %tid.x;\n\
    ld.param.u64 %rd1, [k_param_0+8];\nsetp.lt.u32 %p1, %r1, 10;\n@!%p1 bra $L__BB0_2;\n\
    { .reg .b64 %tmp;\n cvt.u64.u32 %tmp, %r1;\n cvta.shared.u64 %rd2, %tmp; }\n\
    shfl.sync.down.b32 %r2|%p0, %r1, 1, 31, -1;\n{ mov.b32 %r3, {0,%r2};}\n\
    st.shared.v4.u32 [s+16], {%r1, %r2, %r3, %r4};\nmov.f32 %r5, 0f3F800000;\n\
    $L__BB0_2:\nret;\n}\n.section .debug_str\n{\n$L__info_string0:\n.b8 95,0\n}\n";

#[test]
fn sample_parses() {
    let m = parse_ptx(SAMPLE).unwrap();
    assert_eq!(m.kernels[0].body.len(), 11);
}

#[test]
fn truncated_text_is_an_error_inside_a_kernel_and_never_panics() {
    let kernel_start = SAMPLE.find(".visible").unwrap();
    let kernel_end = SAMPLE.find(".section").unwrap();
    for n in 0..SAMPLE.len() {
        let r = parse_ptx(&SAMPLE[..n]);
        if n > kernel_start && n < kernel_end - 2 {
            assert!(r.is_err(), "truncated at {n}: {:?}", &SAMPLE[..n]);
        }
    }
}

#[test]
fn fuzzed_text_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bytes = SAMPLE.as_bytes();
    let alphabet = b"{}()[],;:@!|+-<>=.%$_0123456789abcdefxXfFdD \n\t\"/*";
    for _ in 0..20_000 {
        let mut b = bytes.to_vec();
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(b.len());
            match rng.below(4) {
                0 => b[i] = alphabet[rng.below(alphabet.len())],
                1 => {
                    b.remove(i);
                }
                2 => b.insert(i, alphabet[rng.below(alphabet.len())]),
                _ => {
                    // Duplicate a random slice somewhere else.
                    let j = rng.below(b.len());
                    let len = rng.below(40).min(b.len() - j);
                    let piece: Vec<u8> = b[j..j + len].to_vec();
                    let at = rng.below(b.len());
                    b.splice(at..at, piece);
                }
            }
        }
        let _ = parse_ptx(&String::from_utf8_lossy(&b));
    }
    for _ in 0..2_000 {
        let len = rng.below(300);
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = parse_ptx(&String::from_utf8_lossy(&b));
        let s: String = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())] as char)
            .collect();
        let _ = parse_ptx(&format!("{HEADER}.entry k()\n{{\n{s}"));
    }
}
