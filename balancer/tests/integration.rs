//! The balancer's integration tests, one binary: each file is a module
//! (`cargo test -p balancer --test integration standby::`, say).

#[macro_use]
mod common;

mod bad_input;
mod fuzz_corpus;
mod limits;
mod registry_http;
mod rolling;
mod spawn;
mod standby;
mod stream;
