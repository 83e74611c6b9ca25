//! Signed, expiring tokens: `hex(postcard(Claims)) "." hex(HMAC-SHA256(secret, claims bytes))`.
//!
//! The login side ([`mint`]) and every gateway ([`verify`]) share the secret.
//! Verification checks the MAC in constant time before decoding anything, then
//! the expiry and the zone.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::proto::msg::{ErrorCode, Fail, NAME_BYTES_MAX, TOKEN_BYTES_MAX};

type HmacSha256 = Hmac<Sha256>;

/// What a token says about its holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub player: u64,
    pub zone: u32,
    /// Unix ms after which the token is refused.
    pub expires_ms: u64,
    pub name: String,
    /// 0 guest (the account kinds come with the login server).
    pub kind: u8,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length")
}

fn hex(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(DIGITS[(x >> 4) as usize] as char);
        s.push(DIGITS[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A token for `claims`, signed with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let body = crate::proto::msg::encode(claims);
    let mut m = mac(secret);
    m.update(&body);
    format!("{}.{}", hex(&body), hex(&m.finalize().into_bytes()))
}

/// The claims of a token signed with `secret`, valid at `now_ms` for `zone`.
pub fn verify(secret: &[u8], token: &str, zone: u32, now_ms: u64) -> Result<Claims, Fail> {
    let bad = |why: &str| {
        Fail::new(
            ErrorCode::BadToken,
            format!("token refused: {why}; log in again"),
        )
    };
    if token.len() > TOKEN_BYTES_MAX {
        return Err(bad("too long"));
    }
    let (body, sig) = token.split_once('.').ok_or_else(|| bad("malformed"))?;
    let (body, sig) = (
        unhex(body).ok_or_else(|| bad("malformed"))?,
        unhex(sig).ok_or_else(|| bad("malformed"))?,
    );
    let mut m = mac(secret);
    m.update(&body);
    m.verify_slice(&sig).map_err(|_| bad("bad signature"))?;
    let c: Claims = crate::proto::msg::decode(&body).map_err(|_| bad("malformed claims"))?;
    if c.expires_ms <= now_ms {
        return Err(Fail::new(
            ErrorCode::TokenExpired,
            "token expired; log in again",
        ));
    }
    if c.zone != zone {
        return Err(Fail::new(
            ErrorCode::WrongZone,
            format!(
                "token is for zone {}, this gateway serves zone {zone}",
                c.zone
            ),
        ));
    }
    if c.name.len() > NAME_BYTES_MAX {
        return Err(bad("name too long"));
    }
    Ok(c)
}

/// Unix time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            player: 42,
            zone: 1,
            expires_ms: 2_000,
            name: "ann".into(),
            kind: 0,
        }
    }

    #[test]
    fn a_minted_token_verifies() {
        let t = mint(b"s3cret", &claims());
        assert_eq!(verify(b"s3cret", &t, 1, 1_000).unwrap(), claims());
    }

    #[test]
    fn forged_expired_and_other_zone_tokens_are_refused() {
        let t = mint(b"s3cret", &claims());
        assert_eq!(
            verify(b"other", &t, 1, 1_000).unwrap_err().code,
            ErrorCode::BadToken
        );
        assert_eq!(
            verify(b"s3cret", &t, 1, 2_000).unwrap_err().code,
            ErrorCode::TokenExpired
        );
        assert_eq!(
            verify(b"s3cret", &t, 2, 1_000).unwrap_err().code,
            ErrorCode::WrongZone
        );
        // Claims changed under the old signature: a forged player id.
        let mut c = claims();
        c.player = 43;
        let forged = format!(
            "{}.{}",
            mint(b"x", &c).split_once('.').unwrap().0,
            t.split_once('.').unwrap().1
        );
        assert_eq!(
            verify(b"s3cret", &forged, 1, 1_000).unwrap_err().code,
            ErrorCode::BadToken
        );
        for junk in ["", ".", "zz.zz", "abc", &"a".repeat(5000)] {
            assert_eq!(
                verify(b"s3cret", junk, 1, 1_000).unwrap_err().code,
                ErrorCode::BadToken
            );
        }
    }
}
