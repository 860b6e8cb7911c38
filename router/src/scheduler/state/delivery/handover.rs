//! The prefill → decode hand-over: a sequence whose prompt is done on the prefill group
//! (its first token sampled there) moves its KV cache and sampler state to the decode rank
//! reserved at admission, so its continuation is the same as on one worker.

use std::time::Instant;

use crate::scheduler::state::sequence::Role;
use crate::scheduler::state::SchedState;

impl SchedState {
    /// Moves a prefilled sequence to its decode rank; a failed transfer ends the sequence
    /// with an error (the groups stay up: one sequence's move failed, not a step).
    pub(in crate::scheduler::state) async fn hand_over(&mut self, seq: u64) {
        let Some(r) = self.running.get(&seq) else {
            return;
        };
        let (Some(p), Some(pr)) = (self.prefill.as_ref(), r.prefill_rank) else {
            return;
        };
        let t0 = Instant::now();
        let transfer = match p.client.export_kv(pr, seq, true).await {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("KV transfer from prefill rank {pr} failed: {e}");
                self.fail_seq(seq, &msg);
                return;
            }
        };
        let bytes = (transfer.keys.len() + transfer.values.len()) as u64;
        let decode_rank = r.decode_rank;
        if let Err(e) = self.decode.client.import_kv(decode_rank, transfer).await {
            let msg = format!("KV transfer to decode rank {decode_rank} failed: {e}");
            self.fail_seq(seq, &msg);
            return;
        }
        metrics::counter!("moeflow:kv_transfer_bytes_total").increment(bytes);
        metrics::histogram!("moeflow:kv_transfer_duration_seconds")
            .record(t0.elapsed().as_secs_f64());
        if let Some(r) = self.running.get_mut(&seq) {
            if let (Some(p), Some(pr)) = (self.prefill.as_mut(), r.prefill_rank.take()) {
                p.budget.give_back(pr, r.prefill_blocks);
            }
            r.at = (Role::Decode, decode_rank);
        }
    }
}
