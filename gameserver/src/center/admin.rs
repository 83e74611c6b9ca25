//! A blocking client of the center's admin HTTP (`gs-center kick ...`, tests):
//! one request per connection, tried on each node until the master answers.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::server::SECRET_HEADER;

/// Largest admin answer read, bytes.
const ANSWER_BYTES_MAX: u64 = 16 << 20;

/// `method path` with an optional JSON body on `addr`: (status, JSON body).
pub fn call(
    addr: &str,
    secret: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let sa = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))?;
    let mut c = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
        .map_err(|e| format!("{addr}: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(s) = secret {
        req.push_str(&format!("{SECRET_HEADER}: {s}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    c.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = Vec::new();
    c.take(ANSWER_BYTES_MAX)
        .read_to_end(&mut resp)
        .map_err(|e| format!("{addr}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP answer"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: no status in {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let v = if body.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&body)
            .unwrap_or_else(|_| serde_json::json!({ "error": "not_json", "message": body }))
    };
    Ok((status, v))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    // Bounded: each turn consumes a chunk of a finite string.
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// [`call`] on each of `addrs` in turn until one answers other than
/// `not_master` (or connection refused): the master's answer.
pub fn call_master(
    addrs: &[String],
    secret: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), String> {
    let mut last = String::from("no admin address given");
    for a in addrs {
        match call(a, secret, method, path, body) {
            Ok((_, v)) if v.get("error").and_then(|e| e.as_str()) == Some("not_master") => {
                last = format!("{a}: not master");
            }
            Ok(r) => return Ok(r),
            Err(e) => last = e,
        }
    }
    Err(last)
}
