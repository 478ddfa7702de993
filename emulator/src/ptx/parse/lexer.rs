//! The PTX tokenizer: zero-copy tokens (slices of the source) with their line numbers.
//!
//! Token classes, following the PTX ISA's lexical rules (section "Syntax"):
//! - identifiers `[A-Za-z_$][A-Za-z0-9_$]*`, with `.word` and `::word` continuations kept in the
//!   same token, so that an opcode (`ld.global.nc.v4.u32`) or a special register (`%tid.x`) is
//!   one token; a leading `%` makes it a register token (a plain identifier may name a
//!   register too: the parser resolves names, see its module doc);
//! - directives `.word` (with `::word` continuations, e.g. `.shared::cta`), without further dots,
//!   so `.ptr.global.align` is three tokens;
//! - numbers starting with a digit: the text is kept and interpreted by the parser (decimal,
//!   `0x` hex, `0b` binary, octal, `U` suffix, `0f`/`0d` float bits, decimal floats);
//! - strings `"..."` (backslash escapes skipped over);
//! - single-character punctuation `{ } ( ) [ ] , ; : @ ! | + - < > =`.
//!
//! Comments (`//` to the end of the line, `/* ... */`) and whitespace are skipped.
use crate::ptx::ir::ParseError;

/// The class of a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    Ident,
    Reg,
    Directive,
    Num,
    Str,
    Punct(u8),
    Eof,
}

/// One token: its class, its text (a slice of the source) and where it starts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Token<'a> {
    pub kind: Tok,
    pub text: &'a str,
    pub line: u32,
    /// Byte offset of the token in the source.
    pub pos: usize,
}

impl Token<'_> {
    /// Whether this is the punctuation character `c`.
    pub fn is(&self, c: u8) -> bool {
        self.kind == Tok::Punct(c)
    }
}

/// A streaming lexer with one token of look-ahead.
pub(super) struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    line: u32,
    peeked: Option<Token<'a>>,
}

#[inline]
fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$'
}

#[inline]
fn ident_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer {
            src,
            bytes: src.as_bytes(),
            pos: 0,
            line: 1,
            peeked: None,
        }
    }

    /// The source text.
    pub fn src(&self) -> &'a str {
        self.src
    }

    /// The current line (of the next unread character).
    pub fn line(&self) -> u32 {
        self.peeked.map_or(self.line, |t| t.line)
    }

    /// The next token, without consuming it.
    pub fn peek(&mut self) -> Result<Token<'a>, ParseError> {
        if let Some(t) = self.peeked {
            return Ok(t);
        }
        let t = self.lex()?;
        self.peeked = Some(t);
        Ok(t)
    }

    /// Consumes and returns the next token.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Token<'a>, ParseError> {
        if let Some(t) = self.peeked.take() {
            return Ok(t);
        }
        self.lex()
    }

    /// Consumes the next token if it is the punctuation `c`.
    pub fn eat(&mut self, c: u8) -> Result<bool, ParseError> {
        if self.peek()?.is(c) {
            self.peeked = None;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn error(&self, line: u32, message: String) -> ParseError {
        ParseError { line, message }
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) -> Result<(), ParseError> {
        let b = self.bytes;
        loop {
            while self.pos < b.len() {
                match b[self.pos] {
                    b'\n' => self.line += 1,
                    b' ' | b'\t' | b'\r' | 0x0b | 0x0c => {}
                    _ => break,
                }
                self.pos += 1;
            }
            if self.pos + 1 < b.len() && b[self.pos] == b'/' {
                match b[self.pos + 1] {
                    b'/' => {
                        match b[self.pos..].iter().position(|&c| c == b'\n') {
                            Some(n) => self.pos += n,
                            None => self.pos = b.len(),
                        }
                        continue;
                    }
                    b'*' => {
                        let start_line = self.line;
                        let mut p = self.pos + 2;
                        loop {
                            if p + 1 >= b.len() {
                                return Err(
                                    self.error(start_line, "unterminated /* comment".to_string())
                                );
                            }
                            if b[p] == b'*' && b[p + 1] == b'/' {
                                break;
                            }
                            if b[p] == b'\n' {
                                self.line += 1;
                            }
                            p += 1;
                        }
                        self.pos = p + 2;
                        continue;
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
    }

    /// Consumes `.word` / `::word` continuations of an identifier.
    fn continuations(&mut self, dots: bool) {
        let b = self.bytes;
        loop {
            let p = self.pos;
            if dots && p + 1 < b.len() && b[p] == b'.' && ident_char(b[p + 1]) {
                self.pos = p + 1;
            } else if p + 2 < b.len() && b[p] == b':' && b[p + 1] == b':' && ident_char(b[p + 2]) {
                self.pos = p + 2;
            } else {
                return;
            }
            while self.pos < b.len() && ident_char(b[self.pos]) {
                self.pos += 1;
            }
        }
    }

    fn lex(&mut self) -> Result<Token<'a>, ParseError> {
        self.skip_trivia()?;
        let b = self.bytes;
        let start = self.pos;
        let line = self.line;
        if start >= b.len() {
            return Ok(Token {
                kind: Tok::Eof,
                text: "",
                line,
                pos: start,
            });
        }
        let c = b[start];
        let kind = if ident_start(c)
            || (c == b'%' && start + 1 < b.len() && ident_char(b[start + 1]))
        {
            self.pos += 1;
            while self.pos < b.len() && ident_char(b[self.pos]) {
                self.pos += 1;
            }
            self.continuations(true);
            if c == b'%' {
                Tok::Reg
            } else {
                Tok::Ident
            }
        } else if c == b'.' && start + 1 < b.len() && ident_start(b[start + 1]) {
            self.pos += 1;
            while self.pos < b.len() && ident_char(b[self.pos]) {
                self.pos += 1;
            }
            self.continuations(false);
            Tok::Directive
        } else if c.is_ascii_digit() {
            self.pos += 1;
            while self.pos < b.len() && (b[self.pos].is_ascii_alphanumeric() || b[self.pos] == b'.')
            {
                self.pos += 1;
            }
            // A decimal exponent's sign (`1.5e-3`): only for decimal numbers.
            let text = &b[start..self.pos];
            let prefixed = text.len() > 1
                && text[0] == b'0'
                && matches!(
                    text[1],
                    b'x' | b'X' | b'f' | b'F' | b'd' | b'D' | b'b' | b'B'
                );
            if !prefixed
                && matches!(text.last(), Some(b'e' | b'E'))
                && self.pos + 1 < b.len()
                && matches!(b[self.pos], b'+' | b'-')
                && b[self.pos + 1].is_ascii_digit()
            {
                self.pos += 1;
                while self.pos < b.len() && b[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
            }
            Tok::Num
        } else if c == b'"' {
            let mut p = start + 1;
            loop {
                if p >= b.len() || b[p] == b'\n' {
                    return Err(self.error(line, "unterminated string".to_string()));
                }
                match b[p] {
                    b'"' => break,
                    b'\\' => p += 2,
                    _ => p += 1,
                }
            }
            self.pos = p + 1;
            Tok::Str
        } else if matches!(
            c,
            b'{' | b'}'
                | b'('
                | b')'
                | b'['
                | b']'
                | b','
                | b';'
                | b':'
                | b'@'
                | b'!'
                | b'|'
                | b'+'
                | b'-'
                | b'<'
                | b'>'
                | b'='
        ) {
            self.pos += 1;
            Tok::Punct(c)
        } else {
            let ch = self.src[start..].chars().next().unwrap_or('?');
            return Err(self.error(line, format!("unexpected character {ch:?}")));
        };
        // Every token boundary is at an ASCII byte, so this slice is on char boundaries; the
        // string case may end past a backslash at the very end, which the loop above rejects.
        let end = self.pos.min(b.len());
        let text = self.src.get(start..end).unwrap_or("");
        Ok(Token {
            kind,
            text,
            line,
            pos: start,
        })
    }
}
