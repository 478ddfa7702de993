//! Warp-level matrix operations (in progress).
