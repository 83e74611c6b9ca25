//! A deterministic workload: record `i` always has the same key, operation and
//! value, so two runs (or a master and a checker) agree on the expected state.

use hs::Op;

#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Distinct keys; record `i` touches key `i % keys`.
    pub keys: u64,
    /// Bytes of each put's value.
    pub value_bytes: usize,
    /// Every this many records is a delete (0: never).
    pub delete_every: u64,
}

impl Workload {
    /// Fills `key` and `value` for record `i` and returns its operation.
    pub fn record(&self, i: u64, key: &mut Vec<u8>, value: &mut Vec<u8>) -> Op {
        key.clear();
        key.extend_from_slice(b"k");
        key.extend_from_slice(&(i % self.keys.max(1)).to_le_bytes());
        value.clear();
        if self.delete_every > 0 && i % self.delete_every == self.delete_every - 1 {
            return Op::Delete;
        }
        let word = i.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes();
        while value.len() < self.value_bytes {
            let n = (self.value_bytes - value.len()).min(8);
            value.extend_from_slice(&word[..n]);
        }
        Op::Put
    }
}
