//! Rows (key, model envelope) packed into two buffers: an encoded snapshot waiting for its
//! outputs to be delivered ([`crate::state::policy::Pending`]).
//!
//! Why not `Vec<(String, Vec<u8>)>`: at a million sensors a snapshot holds ~100,000 rows per
//! partition, i.e. 200,000 small allocations that live for a second or so, interleaved in the
//! heap with the long-lived pipelines loaded meanwhile; once freed they leave holes the
//! allocator cannot give back (BENCHMARKS.md, "Memory budget: RSS"). Two large buffers are
//! mapped on their own (`ops::malloc` fixes the mmap threshold) and returned whole when the
//! snapshot is written. The rows' size is also one number, which the memory budget charges
//! while the snapshot waits (`partition::resident`).

/// Rows in push order (callers push in key order), each a key and its envelope bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackedRows {
    /// Every key and value, back to back.
    data: Vec<u8>,
    /// Per row: end of its key, end of its value, in `data`.
    ends: Vec<(usize, usize)>,
}

impl PackedRows {
    /// Append a row.
    pub fn push(&mut self, key: &str, value: &[u8]) {
        self.data.extend_from_slice(key.as_bytes());
        let key_end = self.data.len();
        self.data.extend_from_slice(value);
        self.ends.push((key_end, self.data.len()));
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Heap bytes held (what the memory budget charges).
    pub fn heap_bytes(&self) -> u64 {
        (self.data.capacity() + self.ends.capacity() * std::mem::size_of::<(usize, usize)>()) as u64
    }

    /// The rows as (key, value), in push order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(k, v)| {
            // Keys went in as `&str`: the bytes are UTF-8.
            let key = std::str::from_utf8(&self.data[start..k]).unwrap_or_default();
            let value = &self.data[k..v];
            start = v;
            (key, value)
        })
    }

    /// The rows as owned (key, value) pairs, for the store and the changelog.
    pub fn owned(&self) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
        self.iter().map(|(k, v)| (k.to_string(), v.to_vec()))
    }

    /// Whether `key` has a row (rows pushed in key order: a binary search).
    pub fn contains_key(&self, key: &str) -> bool {
        let key_at = |i: usize| {
            let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
            &self.data[start..self.ends[i].0]
        };
        let (mut lo, mut hi) = (0, self.ends.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match key_at(mid).cmp(key.as_bytes()) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

impl<'a, K: AsRef<str>> FromIterator<(K, &'a [u8])> for PackedRows {
    fn from_iter<I: IntoIterator<Item = (K, &'a [u8])>>(iter: I) -> Self {
        let mut rows = Self::default();
        for (k, v) in iter {
            rows.push(k.as_ref(), v);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_order_and_keys_are_found() {
        let rows: PackedRows = [("a", &b"1"[..]), ("bb", b""), ("c\u{e9}", b"333")].into_iter().collect();
        assert_eq!(rows.len(), 3);
        let back: Vec<(&str, &[u8])> = rows.iter().collect();
        assert_eq!(back, vec![("a", &b"1"[..]), ("bb", b""), ("c\u{e9}", b"333")]);
        assert_eq!(rows.owned().next(), Some(("a".to_string(), b"1".to_vec())));
        for k in ["a", "bb", "c\u{e9}"] {
            assert!(rows.contains_key(k), "{k}");
        }
        for k in ["", "b", "bbb", "d"] {
            assert!(!rows.contains_key(k), "{k}");
        }
        assert!(rows.heap_bytes() >= 11);
        assert!(PackedRows::default().is_empty() && !PackedRows::default().contains_key("a"));
    }
}
