//! One scheduling step: build each group's chunks, run both groups' steps concurrently, then
//! hand the results to delivery (and failures to failure handling).

use super::batch;
use super::sequence::Role;
use super::SchedState;

impl SchedState {
    /// Runs one step on each group that has work, concurrently, then streams the results.
    pub(super) async fn step(&mut self) {
        // One prompt-token budget for the whole step: the prefill group's chunks take from it
        // first, the decode group (aggregated mode, or prompts after a prefill failure) gets
        // the rest.
        let mut budget = self.cfg.prefill_token_budget;
        let prefill_chunks = self
            .prefill
            .as_ref()
            .map(|p| p.client.world_size())
            .map(|n| batch::build(&mut self.running, Role::Prefill, n, &mut budget));
        let decode_world = self.decode.client.world_size();
        let decode_chunks =
            batch::build(&mut self.running, Role::Decode, decode_world, &mut budget);
        let step_id = self.step_id;
        self.step_id += 1;
        let decode_group = self.decode.client.clone();
        let decode_fut = async {
            if decode_chunks.iter().all(Vec::is_empty) {
                Ok(Vec::new())
            } else {
                decode_group.step(step_id, decode_chunks, false).await
            }
        };
        let prefill_group = self.prefill.as_ref().map(|p| p.client.clone());
        let prefill_fut = async {
            match (prefill_group, prefill_chunks) {
                (Some(g), Some(c)) if !c.iter().all(Vec::is_empty) => {
                    g.step(step_id, c, false).await
                }
                _ => Ok(Vec::new()),
            }
        };
        let (decode_res, prefill_res) = tokio::join!(decode_fut, prefill_fut);
        match prefill_res {
            Ok(responses) => {
                let finished_prompts = self.deliver(responses);
                for seq in finished_prompts {
                    self.hand_over(seq).await;
                }
            }
            Err(e) => self.group_failed(Role::Prefill, e),
        }
        match decode_res {
            Ok(responses) => {
                self.deliver(responses);
            }
            Err(e) => self.group_failed(Role::Decode, e),
        }
    }
}
