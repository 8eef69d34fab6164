//! diskseq
