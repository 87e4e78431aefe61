//! A round's outputs, held by the partition thread until the round ends and then handed to
//! the producer together.
//!
//! Why: librdkafka's idempotent producer caps a partition's produce requests at
//! `5 - messages in flight` (`rd_kafka_toppar_producer_serve` compares the cap of five
//! *requests* with a count of *messages*), so once a request of more than four outputs is in
//! flight, nothing more is sent to that partition until it is answered. It sets its broker
//! thread's next wake-up before it applies that cap, though: while outputs older than
//! `linger.ms` wait behind the request in flight, the thread polls its socket with a zero
//! timeout, over and over, until the broker answers. With one shared producer another
//! partition's request usually waits in the connection's queue, which stops the loop; a
//! transactional producer serves one input partition alone, and its thread spun through
//! every round trip: 733,000 polls against 58,000 without transactions for 400,000 readings,
//! and twice the CPU per reading (BENCHMARKS.md, "Transactional outputs: the spinning broker
//! thread").
//!
//! So with transactional outputs a round's outputs reach librdkafka only once the previous
//! round's are delivered (`PartitionTask::release`): nothing waits behind a request in
//! flight. And a round goes out as one request only if librdkafka does not start sending it
//! while the thread is still handing it over: with a 1 ms linger, rounds that took longer
//! went out in two requests and the thread spun on the second (280,000 zero-timeout polls
//! for 600,000 readings). So a transactional producer lingers long
//! (`client::HELD_LINGER_MS`), and the partition thread tells it when a round is complete:
//! a commit sends what the producer holds at once, and so does the next round's release
//! (`OutputProducer::send_now`). The bytes are
//! copied into buffers reused from round to round, so the per-record output buffers are
//! still recycled as each record is processed.

use std::sync::Arc;

use rdkafka::error::KafkaError;

use super::offsets::DeliveryBoard;
use super::producer::{OutputProducer, OutputRef};
use crate::partition::output::{Dest, OutRecord, Source};

/// Most bytes held, overheads included: librdkafka's `batch.size` is 1,000,000 (uncompressed),
/// and the margin leaves room for the last record's outputs. At [`PER_OUTPUT_OVERHEAD`] per
/// output, this is also fewer than 6,000 outputs (`batch.num.messages` is 10,000).
const HELD_BYTES: usize = 900 << 10;
/// An output's bytes in a request besides its key and payload: four source headers (about
/// 100 bytes) and the record's framing.
const PER_OUTPUT_OVERHEAD: usize = 160;

/// Outputs of the records taken in one round, not yet handed to the producer.
#[derive(Debug, Default)]
pub struct Held {
    /// Keys and payloads, back to back.
    bytes: Vec<u8>,
    /// Each output: its topic and where its key and payload end in `bytes`.
    outputs: Vec<(Dest, usize, usize)>,
    /// Each input record with outputs: its offset and replay epoch, how many of `outputs`
    /// are its own, and the CreateTime they carry.
    sources: Vec<HeldSource>,
}

/// One input record's share of [`Held`].
#[derive(Debug, Clone, Copy)]
struct HeldSource {
    offset: i64,
    epoch: u32,
    outputs: u32,
    timestamp_ms: i64,
}

impl Held {
    /// Hold the outputs of the record at `src.offset` that pass `emits`; returns how many.
    pub fn hold(&mut self, src: &Source<'_>, timestamp_ms: i64, out: &[OutRecord], emits: impl Fn(Dest) -> bool) -> u32 {
        let mut n = 0;
        for rec in out.iter().filter(|r| emits(r.dest)) {
            self.bytes.extend_from_slice(&rec.key);
            let key_end = self.bytes.len();
            self.bytes.extend_from_slice(&rec.payload);
            self.outputs.push((rec.dest, key_end, self.bytes.len()));
            n += 1;
        }
        if n > 0 {
            self.sources.push(HeldSource { offset: src.offset, epoch: src.epoch, outputs: n, timestamp_ms });
        }
        n
    }

    /// Outputs held.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// Whether one more record's outputs might not fit the produce request that carries
    /// them ([`HELD_BYTES`]): a round that outgrows one request queues the rest behind it,
    /// and that is what made librdkafka's thread spin (above).
    pub fn full(&self) -> bool {
        self.request_bytes() >= HELD_BYTES
    }

    /// About what the held outputs take in a produce request, uncompressed.
    fn request_bytes(&self) -> usize {
        self.bytes.len() + self.outputs.len() * PER_OUTPUT_OVERHEAD
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Hand every held output to `producer` (input topic `topic`, partition `partition`),
    /// their deliveries reported to `board`, and hold nothing. On an error the outputs not
    /// yet handed over are dropped with the rest: the error ends the partition's run.
    pub fn release(
        &mut self,
        producer: &OutputProducer,
        topic: &str,
        partition: i32,
        board: &Arc<DeliveryBoard>,
    ) -> Result<(), KafkaError> {
        let result = self.each(|s, outputs| {
            let src = Source { topic, partition, offset: s.offset, epoch: s.epoch };
            let headers = src.headers();
            for rec in outputs {
                producer.send(&src, &headers, rec, board, s.timestamp_ms)?;
            }
            Ok(())
        });
        self.drop_all();
        result
    }

    /// Drop what is held, unproduced (the partition was lost, or starts over).
    pub fn drop_all(&mut self) {
        self.bytes.clear();
        self.outputs.clear();
        self.sources.clear();
    }

    /// Call `f` with each held input record and its outputs, in order; stops at the first error.
    fn each<E>(&self, mut f: impl FnMut(&HeldSource, &mut dyn Iterator<Item = OutputRef<'_>>) -> Result<(), E>) -> Result<(), E> {
        let mut outputs = self.outputs.iter();
        let mut start = 0;
        for s in &self.sources {
            let mut mine = outputs.by_ref().take(s.outputs as usize).map(|&(dest, key_end, end)| {
                let rec = OutputRef { dest, key: &self.bytes[start..key_end], payload: &self.bytes[key_end..end] };
                start = end;
                rec
            });
            f(s, &mut mine)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(dest: Dest, key: &str, payload: &str) -> OutRecord {
        OutRecord { dest, key: key.as_bytes().to_vec(), payload: payload.as_bytes().to_vec() }
    }

    #[test]
    fn holding_keeps_each_records_outputs_with_its_offset_and_skips_what_is_not_emitted() {
        let mut held = Held::default();
        let src = Source { topic: "in", partition: 2, offset: 7, epoch: 1 };
        let out = [rec(Dest::Scores, "s-1", "score"), rec(Dest::Alerts, "s-1", "alert")];
        assert_eq!(held.hold(&src, 100, &out, |_| true), 2);
        let src = Source { offset: 8, ..src };
        assert_eq!(held.hold(&src, 101, &out, |d| d == Dest::Alerts), 1);
        assert_eq!(held.hold(&Source { offset: 9, ..src }, 102, &out, |_| false), 0);
        assert_eq!(held.len(), 3);
        let mut parts = Vec::new();
        held.each(|s, outputs| {
            for r in outputs {
                let (key, payload) = (String::from_utf8_lossy(r.key), String::from_utf8_lossy(r.payload));
                parts.push(format!("{} at {}: {:?} {key} {payload}", s.offset, s.timestamp_ms, r.dest));
            }
            Ok::<(), ()>(())
        })
        .expect("no error");
        assert_eq!(parts, ["7 at 100: Scores s-1 score", "7 at 100: Alerts s-1 alert", "8 at 101: Alerts s-1 alert"]);
        held.drop_all();
        assert!(held.is_empty());
    }

    #[test]
    fn a_round_is_full_before_it_outgrows_one_produce_request() {
        let src = Source { topic: "in", partition: 0, offset: 0, epoch: 0 };
        for payload in [1, 150, 4_000] {
            let mut held = Held::default();
            let out = [rec(Dest::Scores, "sensor-1", &"x".repeat(payload))];
            held.hold(&src, 0, &out, |_| true);
            assert!(!held.full(), "one output is not a full round");
            while !held.full() {
                held.hold(&src, 0, &out, |_| true);
            }
            // librdkafka's defaults per request: 10,000 messages, 1,000,000 bytes; a full
            // round leaves room for one more record's outputs besides.
            assert!(held.len() < 10_000, "{payload}: {} outputs", held.len());
            assert!(held.request_bytes() + 8 * (payload + 200) < 1_000_000, "{payload}: {} bytes", held.request_bytes());
            assert!(held.request_bytes() >= 900_000, "{payload}: full early, at {} bytes", held.request_bytes());
        }
    }
}
