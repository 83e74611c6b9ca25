//! Code shared by the operator tools (`hs-node`, the drill, the bench) and the
//! whole-system tests: a checking application, a deterministic workload, and
//! the `hs-node` command line.

pub mod app;
pub mod cli;
pub mod drill;
pub mod gsbench;
pub mod gsbot;
pub mod gscluster;
pub mod gsdrill;
pub mod pair;
pub mod proc;
pub mod witness;
pub mod workload;
