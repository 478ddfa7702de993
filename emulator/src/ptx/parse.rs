//! The PTX text parser. CONTRACT: `parse_ptx` keeps this signature.
//!
//! A hand-written recursive-descent parser over a zero-copy tokenizer (`parse::lexer`). It accepts the
//! PTX that nvcc 13 emits for `.entry` kernels (PTX ISA 9.0) and resolves every name:
//!
//! - registers (`.reg .f32 %f<277>;` ranges and single names) become [`RegId`]s into one flat
//!   register file per kernel; each `{ ... }` scope's declarations get fresh ids, inner names
//!   shadow outer ones and are gone after the scope closes;
//! - labels become the index of the first instruction after them (`body.len()` at the end);
//! - symbols (parameters, kernel variables, module variables) become [`SymbolRef`]s;
//! - special registers (`%tid.x`, `%laneid`, ...) become [`Special`]s.
//!
//! Names. The PTX ISA (section "Identifiers") allows `[a-zA-Z][a-zA-Z0-9_$]*` and
//! `[_$%][a-zA-Z0-9_$]+`: the `%` of nvcc's registers is a convention, not a requirement, and
//! user inline asm writes `{ .reg .pred p; setp.ne.u32 p, ...; @p ... }`. So a register may
//! have any identifier as its name, and a plain name in an operand is resolved in this order:
//! 1. a register, innermost `{ }` scope first (registers are variables of the `.reg` state
//!    space, scoped like other variables: an inner declaration shadows);
//! 2. a symbol: the kernel's parameters and variables, then the module's variables (a
//!    register may shadow a module variable, as an inner scope's variable would);
//! 3. otherwise a label (a branch target), resolved at the end of the kernel.
//!
//! To keep that unambiguous, a register may not take the name of one of the kernel's
//! parameters or variables (nor the other way round): they are declared in the same function
//! scope. A label may not take the name of a register visible where it is defined. `_` alone
//! is the sink, never a register. Special registers keep their `%` (`tid.x` is not one).
//! Opcodes are never confused with names: a statement starts with an opcode, a label
//! (`name:`), a guard (`@p`) or a directive, and names only ever appear as operands.
//!
//! Opcodes are kept verbatim; the interpreter decides what they mean. `.loc` gives each
//! instruction its source position (the first `file line column`) and, when inlined, its
//! call sites: the `inlined_at F L C` goes to [`Module::call_sites`] and the whole chain
//! (that position's own `inlined_at`, and so on, outermost last) to [`Module::inline_chains`].
//! `function_name` is parsed and dropped. `.pragma` is ignored, `.section` blocks (the DWARF
//! strings nvcc emits with `-lineinfo`) are skipped.
//!
//! Rejected with a [`ParseError`] (never a panic): `.func` definitions and declarations, `call`,
//! `.param` inside a body, vector registers, any unknown directive, undeclared registers, unknown
//! labels or symbols, and anything malformed.
mod lexer;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::ir::{
    AddrBase, EntryDirectives, Instruction, Kernel, Loc, Module, Operand, ParamDecl, ParseError,
    RegDecl, RegId, Space, Special, SymbolRef, Type, VarDecl,
};
use lexer::{Lexer, Tok, Token};

/// Most registers one kernel may declare (a guard against absurd `%r<N>` counts).
const MAX_REGS: usize = 1 << 20;
/// Largest variable with an initialiser (its bytes are materialised).
const MAX_INIT_BYTES: u64 = 1 << 24;
/// Deepest nesting of `{ ... }` in an initialiser.
const MAX_INIT_DEPTH: u32 = 16;
/// Longest `inlined_at` chain kept (nvcc's deepest in the crate's PTX is 8); a longer one keeps
/// its innermost call sites. A guard against `.loc`s that name themselves as their call site.
const MAX_INLINE_DEPTH: usize = 64;

/// Parses a PTX module's text.
pub fn parse_ptx(text: &str) -> Result<Module, ParseError> {
    Parser::new(text).module()
}

/// A small, fast hasher for short identifier keys (FxHash's mixing step).
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ i as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The special register named `name` (with its `%`), if it is one.
fn special(name: &str) -> Option<Special> {
    let dim = |s: &str| match s {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    if let Some((base, comp)) = name.split_once('.') {
        let d = dim(comp)?;
        return Some(match base {
            "%tid" => Special::Tid(d),
            "%ntid" => Special::Ntid(d),
            "%ctaid" => Special::Ctaid(d),
            "%nctaid" => Special::Nctaid(d),
            _ => return None,
        });
    }
    Some(match name {
        "%laneid" => Special::LaneId,
        "%warpid" => Special::WarpId,
        "%nwarpid" => Special::NWarpId,
        "%smid" => Special::SmId,
        "%nsmid" => Special::NSmId,
        "%lanemask_eq" => Special::LaneMaskEq,
        "%lanemask_le" => Special::LaneMaskLe,
        "%lanemask_lt" => Special::LaneMaskLt,
        "%lanemask_ge" => Special::LaneMaskGe,
        "%lanemask_gt" => Special::LaneMaskGt,
        "%clock" => Special::Clock,
        "%clock64" => Special::Clock64,
        "%globaltimer" => Special::GlobalTimer,
        "%dynamic_smem_size" => Special::DynamicSmemSize,
        "%total_smem_size" => Special::TotalSmemSize,
        _ => return None,
    })
}

/// Splits `%r123` into (`%r`, 123); `None` without a trailing index (or with a leading zero).
fn split_index(name: &str) -> Option<(&str, u32)> {
    let b = name.as_bytes();
    let mut i = b.len();
    while i > 0 && b[i - 1].is_ascii_digit() {
        i -= 1;
    }
    if i == b.len() || i == 0 {
        return None;
    }
    let digits = &name[i..];
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    Some((&name[..i], digits.parse().ok()?))
}

/// A parsed numeric literal.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i64),
    F32(u32),
    F64(u64),
}

impl Num {
    fn negate(self) -> Num {
        match self {
            Num::Int(v) => Num::Int(v.wrapping_neg()),
            Num::F32(b) => Num::F32(b ^ 0x8000_0000),
            Num::F64(b) => Num::F64(b ^ 0x8000_0000_0000_0000),
        }
    }
}

/// Interprets a number token's text per the PTX ISA's literal rules.
fn parse_num(text: &str) -> Option<Num> {
    let b = text.as_bytes();
    if b.len() > 2 && b[0] == b'0' {
        let digits = &text[2..];
        match b[1] {
            b'f' | b'F' => {
                return (digits.len() == 8 && digits.bytes().all(|c| c.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(digits, 16).ok().map(Num::F32))
                    .flatten();
            }
            b'd' | b'D' => {
                return (digits.len() == 16 && digits.bytes().all(|c| c.is_ascii_hexdigit()))
                    .then(|| u64::from_str_radix(digits, 16).ok().map(Num::F64))
                    .flatten();
            }
            _ => {}
        }
    }
    if text.contains('.')
        || (!text.starts_with("0x") && !text.starts_with("0X") && text.contains(['e', 'E']))
    {
        // A decimal floating-point literal: a double per the PTX ISA.
        if !text
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
        {
            return None;
        }
        return text.parse::<f64>().ok().map(|v| Num::F64(v.to_bits()));
    }
    let body = text.strip_suffix(['U', 'u']).unwrap_or(text);
    let (radix, digits) =
        if let Some(d) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (16, d)
        } else if let Some(d) = body.strip_prefix("0b").or_else(|| body.strip_prefix("0B")) {
            (2, d)
        } else if body.len() > 1 && body.starts_with('0') {
            (8, &body[1..])
        } else {
            (10, body)
        };
    if digits.is_empty() || !digits.bytes().all(|c| (c as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix)
        .ok()
        .map(|v| Num::Int(v as i64))
}

/// One register scope: single names and `%name<N>` ranges.
#[derive(Default)]
struct Scope<'a> {
    singles: FxMap<&'a str, RegId>,
    /// prefix -> (first id, count)
    ranges: FxMap<&'a str, (u32, u32)>,
}

impl Scope<'_> {
    fn get(&self, name: &str, split: Option<(&str, u32)>) -> Option<RegId> {
        if let Some(&r) = self.singles.get(name) {
            return Some(r);
        }
        let (prefix, i) = split?;
        let &(base, count) = self.ranges.get(prefix)?;
        (i < count).then_some(RegId(base + i))
    }
}

/// An inlining chain: call sites, innermost first; `None` when not inlined.
type Chain = Option<Arc<[Loc]>>;

/// A branch target to resolve once the kernel's labels are known.
struct Fixup<'a> {
    instr: usize,
    operand: usize,
    name: &'a str,
    line: u32,
}

/// The state of the kernel being parsed.
struct KernelCtx<'a> {
    kernel: Kernel,
    syms: FxMap<&'a str, SymbolRef>,
    scopes: Vec<Scope<'a>>,
    labels: FxMap<&'a str, u32>,
    fixups: Vec<Fixup<'a>>,
    loc: Option<Loc>,
    /// The inlining chain of the current `.loc` (innermost call site first).
    chain: Chain,
    /// The chain of the latest `.loc` at each (file, line, column) of this kernel.
    chain_at: FxMap<(u32, u32, u32), Chain>,
    /// Per instruction: the immediate call site and the whole chain.
    call_sites: Vec<Option<Loc>>,
    inline_chains: Vec<Chain>,
}

impl<'a> KernelCtx<'a> {
    fn lookup_reg(&self, name: &str) -> Option<RegId> {
        let split = split_index(name);
        self.scopes.iter().rev().find_map(|s| s.get(name, split))
    }

    /// Whether `name` is a register of any open scope (a single name or in a range).
    fn is_reg(&self, name: &str) -> bool {
        self.lookup_reg(name).is_some()
    }

    /// Makes `loc` (with its `inlined_at`, if any) the current position. The call site's own
    /// context is that of the latest `.loc` at the call site's position in this kernel: nvcc
    /// (like LLVM's NVPTX back end) emits a call site's `.loc` before the inlined code's.
    fn set_loc(&mut self, loc: Loc, inlined_at: Option<Loc>) {
        self.loc = Some(loc);
        let chain = inlined_at.map(|site| {
            let key = (site.file, site.line, site.column);
            let outer = self.chain_at.get(&key).cloned().flatten();
            let outer: &[Loc] = outer.as_deref().unwrap_or(&[]);
            let keep = outer.len().min(MAX_INLINE_DEPTH - 1);
            // Reuse the current chain when it is the same (runs of `.loc`s in one function).
            match &self.chain {
                Some(c) if c.len() == keep + 1 && c[0] == site && c[1..] == outer[..keep] => {
                    c.clone()
                }
                _ => {
                    let mut v = Vec::with_capacity(keep + 1);
                    v.push(site);
                    v.extend_from_slice(&outer[..keep]);
                    Arc::from(v)
                }
            }
        });
        self.chain_at
            .insert((loc.file, loc.line, loc.column), chain.clone());
        self.chain = chain;
    }
}

struct Parser<'a> {
    lx: Lexer<'a>,
    module: Module,
    module_syms: FxMap<&'a str, u32>,
    kernel_names: FxMap<&'a str, ()>,
    loc: Option<Loc>,
}

/// Linking prefixes of a module-level declaration.
#[derive(Default, Clone, Copy)]
struct Linkage {
    is_extern: bool,
}

fn space_of(directive: &str) -> Option<Space> {
    Some(match directive {
        ".global" => Space::Global,
        ".shared" => Space::Shared,
        ".local" => Space::Local,
        ".const" => Space::Const,
        ".param" => Space::Param,
        _ => return None,
    })
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser {
            lx: Lexer::new(text),
            module: Module::default(),
            module_syms: FxMap::default(),
            kernel_names: FxMap::default(),
            loc: None,
        }
    }

    /// The text of the source line containing byte `pos`, shortened for messages.
    fn line_text(&self, pos: usize) -> String {
        let src = self.lx.src();
        let pos = pos.min(src.len());
        let start = src[..pos].rfind('\n').map_or(0, |i| i + 1);
        let end = src[pos..].find('\n').map_or(src.len(), |i| pos + i);
        let line = src[start..end].trim();
        let mut cut = line.len().min(160);
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut < line.len() {
            format!("{}...", &line[..cut])
        } else {
            line.to_string()
        }
    }

    /// An error at token `t`, quoting its source line.
    fn err<T>(&self, t: Token<'a>, msg: impl std::fmt::Display) -> Result<T, ParseError> {
        let quoted = if t.kind == Tok::Eof {
            "at the end of the text".to_string()
        } else {
            format!("in `{}`", self.line_text(t.pos))
        };
        Err(ParseError {
            line: t.line,
            message: format!("{msg} {quoted}"),
        })
    }

    fn describe(t: Token<'_>) -> String {
        match t.kind {
            Tok::Eof => "the end of the text".to_string(),
            _ => format!("`{}`", t.text),
        }
    }

    fn expect(&mut self, c: u8) -> Result<Token<'a>, ParseError> {
        let t = self.lx.next()?;
        if t.is(c) {
            Ok(t)
        } else {
            self.err(
                t,
                format_args!("expected `{}`, found {}", c as char, Self::describe(t)),
            )
        }
    }

    fn expect_kind(&mut self, kind: Tok, what: &str) -> Result<Token<'a>, ParseError> {
        let t = self.lx.next()?;
        if t.kind == kind {
            Ok(t)
        } else {
            self.err(
                t,
                format_args!("expected {what}, found {}", Self::describe(t)),
            )
        }
    }

    /// A name token: `%name` or a plain identifier (see the module doc).
    fn expect_name(&mut self, what: &str) -> Result<Token<'a>, ParseError> {
        let t = self.lx.next()?;
        if matches!(t.kind, Tok::Reg | Tok::Ident) {
            Ok(t)
        } else {
            self.err(
                t,
                format_args!("expected {what}, found {}", Self::describe(t)),
            )
        }
    }

    /// A number token as an unsigned integer.
    fn uint(&mut self, what: &str) -> Result<u64, ParseError> {
        let t = self.lx.next()?;
        if t.kind == Tok::Num {
            if let Some(Num::Int(v)) = parse_num(t.text) {
                return Ok(v as u64);
            }
        }
        self.err(
            t,
            format_args!("expected {what} (an integer), found {}", Self::describe(t)),
        )
    }

    fn u32(&mut self, what: &str) -> Result<u32, ParseError> {
        let t = self.lx.peek()?;
        let v = self.uint(what)?;
        match u32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => self.err(t, format_args!("{what} {v} is too large")),
        }
    }

    /// The next token when it is a directive (consumed); `None` (nothing consumed) otherwise.
    fn next_directive(&mut self) -> Result<Option<Token<'a>>, ParseError> {
        let t = self.lx.peek()?;
        if t.kind != Tok::Directive {
            return Ok(None);
        }
        self.lx.next()?;
        Ok(Some(t))
    }

    /// The value after `.align` (the directive `t`): a power of two.
    fn alignment(&mut self, t: Token<'a>) -> Result<u32, ParseError> {
        let a = self.u32("an alignment")?;
        if a == 0 || !a.is_power_of_two() {
            return self.err(t, format_args!("alignment {a} is not a power of two"));
        }
        Ok(a)
    }

    // ----------------------------------------------------------------------------------------
    // Module level
    // ----------------------------------------------------------------------------------------

    fn module(mut self) -> Result<Module, ParseError> {
        let mut saw_version = false;
        let mut saw_target = false;
        loop {
            let t = self.lx.next()?;
            match t.kind {
                Tok::Eof => break,
                Tok::Directive => {}
                _ => {
                    return self.err(
                        t,
                        format_args!(
                            "expected a directive at module level, found {}",
                            Self::describe(t)
                        ),
                    )
                }
            }
            if !saw_version && t.text != ".version" {
                return self.err(t, "a PTX module must begin with `.version`");
            }
            match t.text {
                ".version" => {
                    if saw_version {
                        return self.err(t, "a second `.version`");
                    }
                    saw_version = true;
                    let n = self.expect_kind(Tok::Num, "a version number")?;
                    let parsed = n
                        .text
                        .split_once('.')
                        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
                    match parsed {
                        Some(v) => self.module.version = v,
                        None => return self.err(n, "malformed `.version` number"),
                    }
                }
                ".target" => {
                    saw_target = true;
                    loop {
                        let id = self.expect_kind(Tok::Ident, "a target name")?;
                        self.module.target.push(id.text.to_string());
                        if !self.lx.eat(b',')? {
                            break;
                        }
                    }
                }
                ".address_size" => {
                    let v = self.u32("an address size")?;
                    if v != 32 && v != 64 {
                        return self.err(t, format_args!("address size {v} is neither 32 nor 64"));
                    }
                    self.module.address_size = v;
                }
                ".file" => self.file_directive()?,
                ".loc" => {
                    self.loc_directive()?;
                }
                ".pragma" => self.pragma()?,
                ".section" => self.skip_section()?,
                _ => {
                    if !saw_target {
                        return self.err(t, "`.target` must come before any declaration");
                    }
                    self.declaration(t)?;
                }
            }
        }
        if !saw_version {
            return Err(ParseError {
                line: self.lx.line(),
                message: "not a PTX module: no `.version` directive".to_string(),
            });
        }
        if !saw_target {
            return Err(ParseError {
                line: self.lx.line(),
                message: "no `.target` directive".to_string(),
            });
        }
        Ok(self.module)
    }

    /// `.file N "path" [, timestamp, size]`
    fn file_directive(&mut self) -> Result<(), ParseError> {
        let index = self.u32("a file index")?;
        let s = self.expect_kind(Tok::Str, "a file name string")?;
        if self.lx.eat(b',')? {
            self.uint("a file timestamp")?;
            self.expect(b',')?;
            self.uint("a file size")?;
        }
        let path = &s.text[1..s.text.len() - 1];
        if self.module.file(index).is_some() {
            return self.err(s, format_args!("`.file {index}` declared twice"));
        }
        self.module.files.push((index, path.to_string()));
        Ok(())
    }

    /// `.loc F L C [, function_name LABEL[+imm]] [, inlined_at F L C]`; sets the current loc
    /// and returns it with its `inlined_at` (the last one, should there be two).
    fn loc_directive(&mut self) -> Result<(Loc, Option<Loc>), ParseError> {
        let file = self.u32("a `.loc` file index")?;
        let line = self.u32("a `.loc` line")?;
        let column = self.u32("a `.loc` column")?;
        let mut inlined_at = None;
        while self.lx.eat(b',')? {
            let attr = self.expect_kind(Tok::Ident, "`function_name` or `inlined_at`")?;
            match attr.text {
                "function_name" => {
                    self.expect_kind(Tok::Ident, "a function name label")?;
                    if self.lx.eat(b'+')? {
                        self.uint("an offset")?;
                    }
                }
                "inlined_at" => {
                    let file = self.u32("an `inlined_at` file index")?;
                    let line = self.u32("an `inlined_at` line")?;
                    let column = self.u32("an `inlined_at` column")?;
                    inlined_at = Some(Loc { file, line, column });
                }
                _ => {
                    return self.err(
                        attr,
                        format_args!("unknown `.loc` attribute `{}`", attr.text),
                    )
                }
            }
        }
        let loc = Loc { file, line, column };
        self.loc = Some(loc);
        Ok((loc, inlined_at))
    }

    /// `.pragma "..." [, "..."];` (ignored).
    fn pragma(&mut self) -> Result<(), ParseError> {
        loop {
            self.expect_kind(Tok::Str, "a pragma string")?;
            if !self.lx.eat(b',')? {
                break;
            }
        }
        self.expect(b';')?;
        Ok(())
    }

    /// `.section NAME { ... }`: skipped (DWARF data).
    fn skip_section(&mut self) -> Result<(), ParseError> {
        let name = self.expect_kind(Tok::Directive, "a section name")?;
        let open = self.expect(b'{')?;
        let mut depth = 1u32;
        loop {
            let t = self.lx.next()?;
            match t.kind {
                Tok::Punct(b'{') => depth += 1,
                Tok::Punct(b'}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Tok::Eof => {
                    return self.err(open, format_args!("unterminated `.section {}`", name.text))
                }
                _ => {}
            }
        }
    }

    /// A module-level declaration starting at directive `t`: linkage prefixes, then `.entry`,
    /// `.func` (rejected) or a variable.
    fn declaration(&mut self, first: Token<'a>) -> Result<(), ParseError> {
        let mut t = first;
        let mut link = Linkage::default();
        loop {
            match t.text {
                ".visible" | ".weak" | ".common" => {}
                ".extern" => link.is_extern = true,
                _ => break,
            }
            t = self.expect_kind(Tok::Directive, "a directive after a linkage directive")?;
        }
        match t.text {
            ".entry" => self.entry(t),
            ".func" => {
                // `.func name(...)` or `.func (.param ...) name(...)`.
                let mut name = self.lx.next()?;
                if name.is(b'(') {
                    while !(name.is(b')') || name.kind == Tok::Eof) {
                        name = self.lx.next()?;
                    }
                    name = self.lx.next()?;
                }
                let name = if name.kind == Tok::Ident {
                    name.text
                } else {
                    "?"
                };
                self.err(
                    t,
                    format_args!(
                        "`.func {name}`: device functions (and calls to them) are not supported"
                    ),
                )
            }
            _ => match space_of(t.text) {
                Some(Space::Param) | None => self.err(
                    t,
                    format_args!("unknown or unsupported module-level directive `{}`", t.text),
                ),
                Some(space) => {
                    let vars = self.var_decl(t, space, link.is_extern)?;
                    for v in vars {
                        if self.module_syms.contains_key(v.0) {
                            return self.err(v.2, format_args!("`{}` declared twice", v.0));
                        }
                        self.module_syms.insert(v.0, self.module.vars.len() as u32);
                        self.module.vars.push(v.1);
                    }
                    Ok(())
                }
            },
        }
    }

    /// A type or vector width directive: `(ty, vector count)`.
    fn decl_type(&mut self, start: Token<'a>) -> Result<(Type, u32, u32), ParseError> {
        // Returns (type, vector width, explicit align or 0).
        let mut ty = None;
        let mut vec = 1u32;
        let mut align = 0u32;
        while let Some(t) = self.next_directive()? {
            match t.text {
                ".align" => align = self.alignment(t)?,
                ".v2" => vec = 2,
                ".v4" => vec = 4,
                ".v8" => vec = 8,
                _ => match Type::from_name(&t.text[1..]) {
                    Some(tt) if ty.is_none() => ty = Some(tt),
                    Some(_) => return self.err(t, "two types in one declaration"),
                    None => {
                        return self.err(
                            t,
                            format_args!(
                                "unknown or unsupported declaration qualifier `{}`",
                                t.text
                            ),
                        )
                    }
                },
            }
        }
        match ty {
            Some(ty) => Ok((ty, vec, align)),
            None => self.err(start, "declaration without a type"),
        }
    }

    /// `[N][M]...` after a name: the product of the dimensions, `None` for `[]` first.
    fn dims(&mut self) -> Result<(Option<u64>, bool), ParseError> {
        // Returns (product, has_dims); the product is None when the first dimension is `[]`.
        let mut product = Some(1u64);
        let mut any = false;
        let mut first = true;
        while self.lx.peek()?.is(b'[') {
            let open = self.lx.next()?;
            if first && self.lx.peek()?.is(b']') {
                self.lx.next()?;
                product = None;
            } else {
                let n = self.uint("an array dimension")?;
                self.expect(b']')?;
                product = match product {
                    Some(p) => match p.checked_mul(n) {
                        Some(v) => Some(v),
                        None => return self.err(open, "array size overflows"),
                    },
                    // `x[][4]`: keep the inner product, the outer count comes from the init.
                    None => None,
                };
            }
            first = false;
            any = true;
        }
        Ok((product, any))
    }

    /// A variable declaration after its state space directive: one or more names.
    #[allow(clippy::type_complexity)]
    fn var_decl(
        &mut self,
        start: Token<'a>,
        space: Space,
        is_extern: bool,
    ) -> Result<Vec<(&'a str, VarDecl, Token<'a>)>, ParseError> {
        let (ty, vec, align) = self.decl_type(start)?;
        let elem = ty.size() as u64 * vec as u64;
        let align = if align == 0 { elem as u32 } else { align };
        let mut out = Vec::new();
        loop {
            let name = self.expect_kind(Tok::Ident, "a variable name")?;
            let (count, _) = self.dims()?;
            let mut size = match count {
                Some(c) => match c.checked_mul(elem) {
                    Some(s) => Some(s),
                    None => return self.err(name, "variable size overflows"),
                },
                None => None,
            };
            let mut init = None;
            if self.lx.eat(b'=')? {
                let mut values = Vec::new();
                self.init_values(&mut values, 0)?;
                let bytes_needed = values.len() as u64 * ty.size() as u64;
                let total = match size {
                    Some(s) => {
                        if bytes_needed > s {
                            return self.err(
                                name,
                                format_args!(
                                    "{} initialisers for `{}` of {s} bytes",
                                    values.len(),
                                    name.text
                                ),
                            );
                        }
                        s
                    }
                    None => bytes_needed.div_ceil(elem) * elem,
                };
                if total > MAX_INIT_BYTES {
                    return self.err(name, "initialised variable too large");
                }
                let mut bytes = Vec::with_capacity(total as usize);
                for (v, t) in values {
                    match encode(ty, v) {
                        Some(b) => bytes.extend_from_slice(&b[..ty.size()]),
                        None => {
                            return self
                                .err(t, format_args!("initialiser does not fit type {ty:?}"))
                        }
                    }
                }
                bytes.resize(total as usize, 0);
                size = Some(total);
                init = Some(bytes);
            }
            let size = match size {
                Some(s) => s,
                None if is_extern => 0,
                None => return self.err(name, "an unsized array must be `.extern` or initialised"),
            };
            out.push((
                name.text,
                VarDecl {
                    name: name.text.to_string(),
                    space,
                    ty,
                    align,
                    size,
                    is_extern,
                    init,
                },
                name,
            ));
            if !self.lx.eat(b',')? {
                break;
            }
        }
        self.expect(b';')?;
        Ok(out)
    }

    /// An initialiser: a scalar or a (nested) `{...}` list, flattened.
    fn init_values(
        &mut self,
        out: &mut Vec<(Num, Token<'a>)>,
        depth: u32,
    ) -> Result<(), ParseError> {
        let t = self.lx.next()?;
        if t.is(b'{') {
            if depth >= MAX_INIT_DEPTH {
                return self.err(t, "initialiser nested too deeply");
            }
            loop {
                self.init_values(out, depth + 1)?;
                if !self.lx.eat(b',')? {
                    break;
                }
            }
            self.expect(b'}')?;
            return Ok(());
        }
        let (neg, t) = if t.is(b'-') {
            (true, self.lx.next()?)
        } else {
            (false, t)
        };
        if t.kind == Tok::Num {
            if let Some(n) = parse_num(t.text) {
                out.push((if neg { n.negate() } else { n }, t));
                return Ok(());
            }
        }
        self.err(
            t,
            format_args!(
                "unsupported initialiser {} (only numeric constants)",
                Self::describe(t)
            ),
        )
    }

    // ----------------------------------------------------------------------------------------
    // Kernels
    // ----------------------------------------------------------------------------------------

    /// An `.entry` through its closing `}`; errors inside it name the kernel.
    fn entry(&mut self, entry_tok: Token<'a>) -> Result<(), ParseError> {
        let name = self.expect_kind(Tok::Ident, "a kernel name")?;
        self.entry_body(entry_tok, name).map_err(|mut e| {
            if !e.message.contains(&format!("kernel `{}`", name.text)) {
                e.message.push_str(&format!(" (kernel `{}`)", name.text));
            }
            e
        })
    }

    fn entry_body(&mut self, entry_tok: Token<'a>, name: Token<'a>) -> Result<(), ParseError> {
        if self.kernel_names.insert(name.text, ()).is_some() {
            return self.err(name, format_args!("kernel `{}` defined twice", name.text));
        }
        let mut k = KernelCtx {
            kernel: Kernel {
                name: name.text.to_string(),
                params: Vec::new(),
                regs: Vec::new(),
                vars: Vec::new(),
                body: Vec::new(),
                directives: EntryDirectives::default(),
                ptx_line: entry_tok.line,
            },
            syms: FxMap::default(),
            scopes: Vec::new(),
            labels: FxMap::default(),
            fixups: Vec::new(),
            loc: None,
            chain: None,
            chain_at: FxMap::default(),
            call_sites: Vec::new(),
            inline_chains: Vec::new(),
        };
        self.loc = None;
        if self.lx.eat(b'(')? && !self.lx.eat(b')')? {
            loop {
                self.param(&mut k)?;
                if self.lx.eat(b')')? {
                    break;
                }
                self.expect(b',')?;
            }
        }
        // Performance directives.
        loop {
            let t = self.lx.next()?;
            if t.is(b'{') {
                break;
            }
            if t.is(b';') {
                return self.err(t, format_args!("kernel `{}` has no body", name.text));
            }
            if t.kind != Tok::Directive {
                return self.err(
                    t,
                    format_args!(
                        "expected `{{` or a performance directive, found {}",
                        Self::describe(t)
                    ),
                );
            }
            match t.text {
                ".maxntid" | ".reqntid" => {
                    let mut v = [1u32; 3];
                    for (i, slot) in v.iter_mut().enumerate() {
                        if i > 0 && !self.lx.eat(b',')? {
                            break;
                        }
                        *slot = self.u32("a thread count")?;
                    }
                    let d = &mut k.kernel.directives;
                    if t.text == ".maxntid" {
                        d.maxntid = Some(v);
                    } else {
                        d.reqntid = Some(v);
                    }
                }
                ".minnctapersm" => {
                    let v = self.u32("a block count")?;
                    k.kernel.directives.minnctapersm = Some(v);
                }
                ".maxnreg" => {
                    let v = self.u32("a register count")?;
                    k.kernel.directives.maxnreg = Some(v);
                }
                ".pragma" => self.pragma()?,
                _ => {
                    return self.err(
                        t,
                        format_args!("unknown or unsupported kernel directive `{}`", t.text),
                    )
                }
            }
        }
        k.scopes.push(Scope::default());
        self.body(&mut k)?;
        // Resolve branch targets.
        for f in std::mem::take(&mut k.fixups) {
            match k.labels.get(f.name) {
                Some(&target) => {
                    k.kernel.body[f.instr].operands[f.operand] = Operand::Label(target)
                }
                None => {
                    return Err(ParseError {
                        line: f.line,
                        message: format!(
                            "unknown label or symbol `{}` in kernel `{}`",
                            f.name, k.kernel.name
                        ),
                    })
                }
            }
        }
        self.module.kernels.push(k.kernel);
        self.module.call_sites.push(k.call_sites);
        self.module.inline_chains.push(k.inline_chains);
        Ok(())
    }

    /// One kernel parameter.
    fn param(&mut self, k: &mut KernelCtx<'a>) -> Result<(), ParseError> {
        let p = self.expect_kind(Tok::Directive, "`.param`")?;
        if p.text != ".param" {
            return self.err(p, format_args!("expected `.param`, found `{}`", p.text));
        }
        let mut ty = None;
        let mut align = 0u32;
        let mut after_ptr = false;
        while let Some(t) = self.next_directive()? {
            match t.text {
                ".align" => {
                    let a = self.alignment(t)?;
                    // After `.ptr`, `.align` is the pointee's alignment.
                    if !after_ptr {
                        align = a;
                    }
                }
                ".ptr" => after_ptr = true,
                ".global" | ".shared" | ".const" | ".local" if after_ptr => {}
                _ => match Type::from_name(&t.text[1..]) {
                    Some(tt) if ty.is_none() => ty = Some(tt),
                    _ => {
                        return self.err(
                            t,
                            format_args!("unknown or unsupported parameter qualifier `{}`", t.text),
                        )
                    }
                },
            }
        }
        let Some(ty) = ty else {
            return self.err(p, "parameter without a type");
        };
        let name = self.expect_kind(Tok::Ident, "a parameter name")?;
        let (count, _) = self.dims()?;
        let Some(size) = count.and_then(|c| c.checked_mul(ty.size() as u64)) else {
            return self.err(name, "parameter of unknown or overflowing size");
        };
        if k.syms.contains_key(name.text) {
            return self.err(
                name,
                format_args!("parameter `{}` declared twice", name.text),
            );
        }
        k.syms
            .insert(name.text, SymbolRef::Param(k.kernel.params.len() as u32));
        k.kernel.params.push(ParamDecl {
            name: name.text.to_string(),
            ty,
            align: if align == 0 { ty.size() as u32 } else { align },
            size,
        });
        Ok(())
    }

    /// The statements of a body, after its opening `{`, through the closing `}`.
    fn body(&mut self, k: &mut KernelCtx<'a>) -> Result<(), ParseError> {
        loop {
            let t = self.lx.next()?;
            match t.kind {
                Tok::Punct(b'{') => k.scopes.push(Scope::default()),
                Tok::Punct(b'}') => {
                    k.scopes.pop();
                    if k.scopes.is_empty() {
                        return Ok(());
                    }
                }
                Tok::Directive => self.body_directive(k, t)?,
                Tok::Ident => {
                    if self.lx.eat(b':')? {
                        if k.is_reg(t.text) {
                            return self.err(
                                t,
                                format_args!("label `{}` has the name of a register", t.text),
                            );
                        }
                        let at = k.kernel.body.len() as u32;
                        if k.labels.insert(t.text, at).is_some() {
                            return self.err(t, format_args!("label `{}` defined twice", t.text));
                        }
                    } else {
                        self.instruction(k, None, t)?;
                    }
                }
                Tok::Punct(b'@') => {
                    let neg = self.lx.eat(b'!')?;
                    let r = self.expect_name("a guard predicate register")?;
                    let Some(id) = k.lookup_reg(r.text) else {
                        return self.err(r, format_args!("undeclared register `{}`", r.text));
                    };
                    if k.kernel.regs[id.0 as usize].ty != Type::Pred {
                        return self.err(r, format_args!("guard `{}` is not a predicate", r.text));
                    }
                    let op = self.expect_kind(Tok::Ident, "an instruction after the guard")?;
                    self.instruction(k, Some((id, neg)), op)?;
                }
                Tok::Eof => {
                    return self.err(
                        t,
                        format_args!("kernel `{}` is not closed (missing `}}`)", k.kernel.name),
                    )
                }
                _ => {
                    return self.err(
                        t,
                        format_args!("expected a statement, found {}", Self::describe(t)),
                    )
                }
            }
        }
    }

    fn body_directive(&mut self, k: &mut KernelCtx<'a>, t: Token<'a>) -> Result<(), ParseError> {
        match t.text {
            ".reg" => self.reg_decl(k),
            ".loc" => {
                let (loc, inlined_at) = self.loc_directive()?;
                k.set_loc(loc, inlined_at);
                Ok(())
            }
            ".pragma" => self.pragma(),
            ".shared" | ".local" | ".extern" => {
                let (space_tok, is_extern) = if t.text == ".extern" {
                    (self.expect_kind(Tok::Directive, "a state space")?, true)
                } else {
                    (t, false)
                };
                let space = match space_tok.text {
                    ".shared" => Space::Shared,
                    ".local" => Space::Local,
                    _ => {
                        return self.err(
                            space_tok,
                            format_args!(
                                "unsupported declaration `{}` inside a kernel",
                                space_tok.text
                            ),
                        )
                    }
                };
                for (name, var, tok) in self.var_decl(space_tok, space, is_extern)? {
                    if k.syms.contains_key(name) {
                        return self.err(tok, format_args!("`{name}` declared twice"));
                    }
                    if k.is_reg(name) {
                        return self.err(
                            tok,
                            format_args!("variable `{name}` has the name of a register"),
                        );
                    }
                    k.syms
                        .insert(name, SymbolRef::KernelVar(k.kernel.vars.len() as u32));
                    k.kernel.vars.push(var);
                }
                Ok(())
            }
            ".param" => self.err(
                t,
                "`.param` inside a kernel body (a call sequence) is not supported",
            ),
            _ => self.err(
                t,
                format_args!(
                    "unknown or unsupported directive `{}` inside a kernel",
                    t.text
                ),
            ),
        }
    }

    /// `.reg .type %a, %b<N>, ...;`
    fn reg_decl(&mut self, k: &mut KernelCtx<'a>) -> Result<(), ParseError> {
        let t = self.expect_kind(Tok::Directive, "a register type")?;
        let ty = match t.text {
            ".v2" | ".v4" | ".v8" => {
                return self.err(t, "vector registers (`.reg .vN`) are not supported")
            }
            _ => match Type::from_name(&t.text[1..]) {
                Some(ty) => ty,
                None => return self.err(t, format_args!("unknown register type `{}`", t.text)),
            },
        };
        loop {
            let r = self.expect_name("a register name")?;
            if r.text.contains(['.', ':']) || special(r.text).is_some() || r.text == "_" {
                return self.err(r, format_args!("bad register name `{}`", r.text));
            }
            if k.syms.contains_key(r.text) {
                return self.err(
                    r,
                    format_args!(
                        "register `{}` has the name of a parameter or variable of the kernel",
                        r.text
                    ),
                );
            }
            let scope_idx = k.scopes.len() - 1;
            if self.lx.eat(b'<')? {
                if r.text.ends_with(|c: char| c.is_ascii_digit()) {
                    return self.err(
                        r,
                        format_args!("a register range prefix `{}` ending in a digit", r.text),
                    );
                }
                let n = self.u32("a register count")?;
                self.expect(b'>')?;
                if k.kernel.regs.len() + n as usize > MAX_REGS {
                    return self.err(r, "too many registers");
                }
                let scope = &k.scopes[scope_idx];
                let clash = scope.ranges.contains_key(r.text)
                    || scope
                        .singles
                        .keys()
                        .any(|s| split_index(s).is_some_and(|(p, i)| p == r.text && i < n));
                if clash {
                    return self.err(
                        r,
                        format_args!("registers `{}<{n}>` declared twice", r.text),
                    );
                }
                let base = k.kernel.regs.len() as u32;
                k.kernel.regs.reserve(n as usize);
                for i in 0..n {
                    k.kernel.regs.push(RegDecl {
                        name: format!("{}{i}", r.text),
                        ty,
                    });
                }
                k.scopes[scope_idx].ranges.insert(r.text, (base, n));
            } else {
                if k.scopes[scope_idx]
                    .get(r.text, split_index(r.text))
                    .is_some()
                {
                    return self.err(r, format_args!("register `{}` declared twice", r.text));
                }
                if k.kernel.regs.len() >= MAX_REGS {
                    return self.err(r, "too many registers");
                }
                let id = RegId(k.kernel.regs.len() as u32);
                k.kernel.regs.push(RegDecl {
                    name: r.text.to_string(),
                    ty,
                });
                k.scopes[scope_idx].singles.insert(r.text, id);
            }
            if !self.lx.eat(b',')? {
                break;
            }
        }
        self.expect(b';')?;
        Ok(())
    }

    /// An instruction after its (optional) guard: opcode, operands, `;`.
    fn instruction(
        &mut self,
        k: &mut KernelCtx<'a>,
        guard: Option<(RegId, bool)>,
        op: Token<'a>,
    ) -> Result<(), ParseError> {
        if op.text == "call" || op.text.starts_with("call.") {
            return self.err(op, "`call` (device functions) is not supported");
        }
        let index = k.kernel.body.len();
        let mut operands = Vec::with_capacity(4);
        if !self.lx.eat(b';')? {
            loop {
                let o = self.operand(k, index, operands.len())?;
                operands.push(o);
                let t = self.lx.next()?;
                if t.is(b';') {
                    break;
                }
                if !t.is(b',') {
                    return self.err(
                        t,
                        format_args!(
                            "expected `,` or `;` after an operand, found {}",
                            Self::describe(t)
                        ),
                    );
                }
            }
        }
        k.kernel.body.push(Instruction {
            guard,
            opcode: op.text.to_string(),
            operands,
            loc: k.loc,
            ptx_line: op.line,
        });
        k.call_sites.push(k.chain.as_ref().map(|c| c[0]));
        k.inline_chains.push(k.chain.clone());
        Ok(())
    }

    fn reg(&mut self, k: &KernelCtx<'a>, t: Token<'a>) -> Result<RegId, ParseError> {
        match k.lookup_reg(t.text) {
            Some(id) => Ok(id),
            None => self.err(t, format_args!("undeclared register `{}`", t.text)),
        }
    }

    /// A register or special register operand.
    fn reg_operand(&mut self, k: &KernelCtx<'a>, t: Token<'a>) -> Result<Operand, ParseError> {
        if let Some(s) = special(t.text) {
            return Ok(Operand::Special(s));
        }
        let id = self.reg(k, t)?;
        Ok(Operand::Reg(id))
    }

    /// A register (or special register) operand at token `t`, or a pair `a|b`.
    fn reg_or_pair(&mut self, k: &KernelCtx<'a>, t: Token<'a>) -> Result<Operand, ParseError> {
        let first = self.reg_operand(k, t)?;
        if self.lx.eat(b'|')? {
            let r2 = self.expect_name("a register after `|`")?;
            let (Operand::Reg(a), b) = (first, self.reg(k, r2)?) else {
                return self.err(t, "a special register in a register pair");
            };
            return Ok(Operand::RegPair(a, b));
        }
        Ok(first)
    }

    /// A signed number (`-` allowed) starting at token `t`.
    fn signed_num(&mut self, t: Token<'a>) -> Result<Num, ParseError> {
        let (neg, n) = if t.is(b'-') {
            (true, self.lx.next()?)
        } else {
            (false, t)
        };
        if n.kind == Tok::Num {
            if let Some(v) = parse_num(n.text) {
                return Ok(if neg { v.negate() } else { v });
            }
            return self.err(n, format_args!("malformed number `{}`", n.text));
        }
        self.err(
            n,
            format_args!("expected a number, found {}", Self::describe(n)),
        )
    }

    fn num_operand(v: Num) -> Operand {
        match v {
            Num::Int(i) => Operand::Int(i),
            Num::F32(b) => Operand::F32(b),
            Num::F64(b) => Operand::F64(b),
        }
    }

    /// A symbol by name: the kernel's own (parameters, variables) first, then the module's.
    fn symbol(&self, k: &KernelCtx<'a>, name: &str) -> Option<SymbolRef> {
        k.syms
            .get(name)
            .copied()
            .or_else(|| self.module_syms.get(name).map(|&i| SymbolRef::ModuleVar(i)))
    }

    fn operand(
        &mut self,
        k: &mut KernelCtx<'a>,
        instr: usize,
        index: usize,
    ) -> Result<Operand, ParseError> {
        let t = self.lx.next()?;
        match t.kind {
            Tok::Reg => self.reg_or_pair(k, t),
            Tok::Ident if t.text != "_" && k.is_reg(t.text) => self.reg_or_pair(k, t),
            Tok::Punct(b'!') => {
                let r = self.expect_name("a register after `!`")?;
                Ok(Operand::NotReg(self.reg(k, r)?))
            }
            Tok::Punct(b'-') | Tok::Num => Ok(Self::num_operand(self.signed_num(t)?)),
            Tok::Punct(b'{') => {
                let mut elems = Vec::new();
                loop {
                    let e = self.lx.next()?;
                    let v = match e.kind {
                        Tok::Reg => match self.reg_operand(k, e)? {
                            Operand::Special(_) => {
                                return self.err(e, "a special register in a vector operand")
                            }
                            r => r,
                        },
                        Tok::Ident if e.text == "_" => Operand::Sink,
                        Tok::Ident => Operand::Reg(self.reg(k, e)?),
                        Tok::Punct(b'-') | Tok::Num => Self::num_operand(self.signed_num(e)?),
                        _ => {
                            return self.err(
                                e,
                                format_args!(
                                    "unexpected {} in a vector operand",
                                    Self::describe(e)
                                ),
                            )
                        }
                    };
                    elems.push(v);
                    if self.lx.eat(b'}')? {
                        break;
                    }
                    self.expect(b',')?;
                }
                Ok(Operand::Vector(elems))
            }
            Tok::Punct(b'[') => {
                let b = self.lx.next()?;
                let (base, mut offset) = match b.kind {
                    Tok::Reg => {
                        if special(b.text).is_some() {
                            return self.err(b, "a special register as an address");
                        }
                        (AddrBase::Reg(self.reg(k, b)?), 0i64)
                    }
                    Tok::Ident => match (k.lookup_reg(b.text), self.symbol(k, b.text)) {
                        (Some(r), _) => (AddrBase::Reg(r), 0),
                        (None, Some(s)) => (AddrBase::Symbol(s), 0),
                        (None, None) => {
                            return self
                                .err(b, format_args!("unknown symbol or register `{}`", b.text))
                        }
                    },
                    Tok::Num | Tok::Punct(b'-') => match self.signed_num(b)? {
                        Num::Int(v) => (AddrBase::Absolute, v),
                        _ => return self.err(b, "a floating-point address"),
                    },
                    _ => {
                        return self.err(
                            b,
                            format_args!("unexpected {} in an address", Self::describe(b)),
                        )
                    }
                };
                let t2 = self.lx.next()?;
                let close = if t2.is(b'+') || t2.is(b'-') {
                    let first = if t2.is(b'+') { self.lx.next()? } else { t2 };
                    match self.signed_num(first)? {
                        Num::Int(v) => offset = offset.wrapping_add(v),
                        _ => return self.err(first, "a floating-point address offset"),
                    }
                    self.lx.next()?
                } else {
                    t2
                };
                if !close.is(b']') {
                    return self.err(
                        close,
                        format_args!(
                            "expected `]` to close the address, found {}",
                            Self::describe(close)
                        ),
                    );
                }
                Ok(Operand::Address { base, offset })
            }
            Tok::Ident if t.text == "_" => Ok(Operand::Sink),
            Tok::Ident => {
                if let Some(s) = self.symbol(k, t.text) {
                    return Ok(Operand::Symbol(s));
                }
                if t.text.contains(['.', ':']) {
                    return self.err(t, format_args!("unknown symbol `{}`", t.text));
                }
                k.fixups.push(Fixup {
                    instr,
                    operand: index,
                    name: t.text,
                    line: t.line,
                });
                Ok(Operand::Label(u32::MAX))
            }
            _ => self.err(
                t,
                format_args!("expected an operand, found {}", Self::describe(t)),
            ),
        }
    }
}

/// The little-endian bytes of initialiser value `v` as type `ty` (first `ty.size()` bytes).
fn encode(ty: Type, v: Num) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    match ty {
        Type::F32 => {
            let bits = match v {
                Num::Int(i) => (i as f32).to_bits(),
                Num::F32(b) => b,
                Num::F64(b) => (f64::from_bits(b) as f32).to_bits(),
            };
            out[..4].copy_from_slice(&bits.to_le_bytes());
        }
        Type::F64 => {
            let bits = match v {
                Num::Int(i) => (i as f64).to_bits(),
                Num::F32(b) => (f32::from_bits(b) as f64).to_bits(),
                Num::F64(b) => b,
            };
            out[..8].copy_from_slice(&bits.to_le_bytes());
        }
        Type::F16 | Type::Bf16 | Type::F16x2 | Type::Bf16x2 | Type::Pred => return None,
        _ => {
            let Num::Int(i) = v else { return None };
            out[..8].copy_from_slice(&i.to_le_bytes());
            if ty == Type::B128 && i < 0 {
                out[8..].fill(0xff);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
