//! Who may submit which task types: a policy the backend sets on its workers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the policy knows of a signer: the node record the primary keeps.
#[derive(Debug, Clone)]
pub struct Signer {
    pub public_key: String,
    pub node_id: u32,
    pub node_type: String,
    pub user_id: Option<i64>,
}

type Decide = Arc<dyn Fn(&Signer, &str) -> bool + Send + Sync>;

enum Rule {
    Keys(HashSet<String>),
    Callback(Decide),
}

/// By default every approved node (and the primaries themselves) may submit every type; a
/// type can be limited to a list of public keys or to a callback's decision.
#[derive(Default, Clone)]
pub struct Policy {
    per_type: HashMap<String, Arc<Rule>>,
}

impl Policy {
    /// Only the nodes with these public keys (hex) may submit `task_type`.
    pub fn allow_keys<I, S>(mut self, task_type: &str, keys: I) -> Policy
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys = keys.into_iter().map(|k| k.into().to_lowercase()).collect();
        self.per_type
            .insert(task_type.to_string(), Arc::new(Rule::Keys(keys)));
        self
    }

    /// `decide(signer, task_type)` says whether the signer may submit `task_type`.
    pub fn allow_if(
        mut self,
        task_type: &str,
        decide: impl Fn(&Signer, &str) -> bool + Send + Sync + 'static,
    ) -> Policy {
        self.per_type.insert(
            task_type.to_string(),
            Arc::new(Rule::Callback(Arc::new(decide))),
        );
        self
    }

    /// Whether `signer` (already known to be an approved node) may submit `task_type`.
    pub fn allows(&self, signer: &Signer, task_type: &str) -> bool {
        match self.per_type.get(task_type).map(Arc::as_ref) {
            None => true,
            Some(Rule::Keys(keys)) => keys.contains(&signer.public_key),
            Some(Rule::Callback(decide)) => {
                // A panicking callback refuses rather than bringing the worker down.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decide(signer, task_type)))
                    .unwrap_or(false)
            }
        }
    }
}
