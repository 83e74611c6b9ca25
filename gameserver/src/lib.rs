//! The game server: the processes players connect to.
//!
//! - [`proto`]: frames and payloads (client ↔ gateway), sans-IO;
//! - [`link`]: the gateway ↔ room-server messages;
//! - [`center`]: the center server (global user table, login queue,
//!   blacklist, broadcasts) and its link;
//! - [`game`]: table games' rules (Gomoku), pure;
//! - [`room`]: a room's rules as a state machine, and how rooms live in hs;
//! - [`token`]: signed expiring tokens;
//! - [`fuzz`]: the fuzz targets' entry points (`gameserver/fuzz/`).

pub mod accounts;
pub mod center;
pub mod client;
pub mod fuzz;
pub mod game;
pub mod gateway;
pub mod link;
pub mod login;
pub mod pairnode;
pub mod proto;
pub mod report;
pub mod room;
pub mod roomserver;
pub mod standby;
pub mod token;
