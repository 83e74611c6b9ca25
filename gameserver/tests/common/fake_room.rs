//! The link side of the fake room servers the gateway tests stand up
//! (`gateway.rs`, `hostile.rs`, `crypto.rs`): reading the gateway's frames
//! and framing the fake's answers. Each test keeps its own answers, and
//! uses only some of these helpers.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use gameserver::link::FromRoom;
use gameserver::proto::frame::{self, Frame, Kind};
use gameserver::proto::msg::{self, RoomInfo};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame a fake room accepts from the gateway.
pub const LINK_FRAME_BYTES_MAX: usize = 1 << 20;

/// `m` as one link frame, ready to write.
pub fn link_frame(m: &FromRoom) -> Bytes {
    Frame::new(Kind::FromRoom, 0, 0, Bytes::from(msg::encode(m))).to_bytes()
}

/// The gateway's next frame on this link (`buf` holds what was read past
/// the previous one); `None` once the link is closed or fails. A frame that
/// does not decode fails the test: the gateway never sends one.
pub async fn next_frame(rd: &mut (impl AsyncRead + Unpin), buf: &mut BytesMut) -> Option<Frame> {
    loop {
        match frame::decode(buf, LINK_FRAME_BYTES_MAX) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(e) => panic!("the gateway sent a bad frame: {e}"),
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The rooms a fake room server holds: 1 to 3, Gomoku, empty.
pub fn rooms() -> Vec<RoomInfo> {
    rooms_with(0, |id| format!("room {id}"))
}

/// Rooms 1 to 3, Gomoku, each with `online` players and the name `name(id)`.
pub fn rooms_with(online: u32, name: impl Fn(u32) -> String) -> Vec<RoomInfo> {
    (1..=3)
        .map(|id| RoomInfo {
            id,
            name: name(id),
            game: "gomoku".into(),
            online,
            capacity: 400,
        })
        .collect()
}
