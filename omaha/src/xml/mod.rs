//! XML plumbing: a bounded tokeniser that keeps only the elements a message model knows, and an
//! escaping writer.

pub(crate) mod tree;
pub(crate) mod writer;
