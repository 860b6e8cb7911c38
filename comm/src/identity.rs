//! What makes a process a member of a particular group: checked in the TCP handshake and by
//! the bootstrap coordinator, so that a worker of another model or plan can never join.

/// The identity every rank of a group must share.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupIdentity {
    /// Names one group instance (e.g. a deployment and a generation number); two groups on the
    /// same hosts must not cross-connect.
    pub group_id: String,
    /// Identity of the loaded model (e.g. a hash of config.json and weights' names); ranks
    /// running different models would exchange meaningless activations.
    pub model_fingerprint: String,
    /// Version of the placement plan; ranks on different plans would send tokens to ranks that
    /// do not host the expert.
    pub plan_version: u64,
}
