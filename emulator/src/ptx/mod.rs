//! PTX input: the fatbin container ([`fatbin`]), the text parser ([`parse`]) and the parsed form
//! ([`ir`]).
pub mod fatbin;
pub mod ir;
pub mod parse;

pub use parse::parse_ptx;
