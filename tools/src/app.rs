//! A key-value application that checks what hs hands it: positions strictly
//! increase (no duplicate apply) and follow each other (no gap), and the state
//! has an order-independent digest two nodes can compare.

use std::collections::HashMap;
use std::sync::Arc;

use hs::{Apply, Op, RecordRef};
use std::sync::Mutex;

/// The state and the checks; shared with whoever reports it.
#[derive(Debug, Default)]
pub struct KvState {
    pub map: HashMap<Vec<u8>, Vec<u8>>,
    /// Records applied in this process.
    pub applied: u64,
    /// One past the last record applied.
    pub next_pos: Option<u64>,
    pub duplicates: u64,
    pub gaps: u64,
    pub resets: u64,
    pub segment_bytes: u64,
}

impl KvState {
    pub fn put(&mut self, k: &[u8], v: &[u8]) {
        self.map.insert(k.to_vec(), v.to_vec());
    }

    pub fn apply_op(&mut self, op: Op, k: &[u8], v: &[u8]) {
        match op {
            Op::Put => self.put(k, v),
            Op::Delete => {
                self.map.remove(k);
            }
        }
    }

    /// Order-independent digest of the state: wrapping sum of FNV-1a of each entry.
    pub fn digest(&self) -> u64 {
        self.map.iter().fold(self.map.len() as u64, |acc, (k, v)| {
            acc.wrapping_add(entry_hash(k, v))
        })
    }
}

pub fn entry_hash(k: &[u8], v: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in (k.len() as u32).to_le_bytes().iter().chain(k).chain(v) {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The `Apply` side: a handle on a shared `KvState`.
#[derive(Clone)]
pub struct KvApp(pub Arc<Mutex<KvState>>);

impl KvApp {
    pub fn new(segment_bytes: u64) -> Self {
        KvApp(Arc::new(Mutex::new(KvState {
            segment_bytes,
            ..Default::default()
        })))
    }
}

impl Apply for KvApp {
    fn apply(&mut self, rec: &RecordRef<'_>) {
        let mut s = self.0.lock().unwrap();
        if let Some(next) = s.next_pos {
            let seg = s.segment_bytes.max(1);
            if rec.pos < next {
                s.duplicates += 1;
            } else if rec.pos != next
                && !(rec.pos.is_multiple_of(seg) && next / seg + 1 == rec.pos / seg)
            {
                s.gaps += 1;
            }
        }
        s.next_pos =
            Some(rec.pos + hs::proto::record::encoded_len(rec.key.len(), rec.value.len()) as u64);
        s.applied += 1;
        s.apply_op(rec.op, rec.key, rec.value);
    }

    fn reset(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.map.clear();
        s.next_pos = None;
        s.resets += 1;
    }

    fn restore(&mut self, key: &[u8], value: &[u8]) {
        self.0.lock().unwrap().put(key, value);
    }
}
