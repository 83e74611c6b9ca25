//! The client protocol: the frame codec and the payloads. Sans-IO.

pub mod frame;
pub mod msg;
pub mod noise;
