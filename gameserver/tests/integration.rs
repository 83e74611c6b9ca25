//! The gameserver's integration tests, one binary: each file is a module
//! (`cargo test -p gameserver --test integration login::`, say).

#[path = "common/fake_room.rs"]
mod fake_room;
#[path = "common/store_suite.rs"]
mod store_suite;

mod accounts_postgres;
mod center;
mod crypto;
mod fuzz_corpus;
mod gateway;
mod hostile;
mod login;
mod playerdata;
