//! Authorization (SPEC §4.2–4.3): what a node asks for, what the backend answers, and the ways
//! the backend decides (callbacks, later PRAGMAs, an external service).

pub mod service;

use crate::error::{Error, Result};
use crate::uri::Role;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// Largest sign-up / login data a device may send; more is refused unread.
pub const MAX_REQUEST_DATA: usize = 16 * 1024;
/// Most authorization requests a primary keeps waiting at once; more are refused until some
/// are decided, so a flood of sign-ups cannot grow memory.
pub const MAX_PENDING: usize = 256;

/// What a node asks the backend for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    UserSignup,
    UserLogin,
    NewNode,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::UserSignup => "user_signup",
            Action::UserLogin => "user_login",
            Action::NewNode => "new_node",
        }
    }
    pub fn from_name(name: &str) -> Option<Action> {
        [Action::UserSignup, Action::UserLogin, Action::NewNode]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// A request as the backend's deciding code sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    pub action: Action,
    /// The app's sign-up / login data (None for new_node).
    pub data: Option<String>,
    /// Hex public key of the asking node: the key the answer names.
    pub pubkey: String,
    /// JSON describing the node: public_key, node_type, address and what it told about itself.
    pub node_info: String,
}

/// The backend's answer. Sent between primaries (a follower's decisions go to the leader):
/// never reorder its variants.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Decision {
    /// Approve as a device of this user; 0 = a new user, id chosen by the engine.
    User(i64),
    /// Approve as a node of this type (auth=node, and primaries).
    Node(Role),
    Reject(String),
    /// Decided later, by `PRAGMA authorize_*` (callback returned -2).
    Pending,
}

impl Decision {
    /// The meaning of a user_signup / user_login callback's return value.
    pub fn from_user_code(code: i64) -> Decision {
        match code {
            id if id >= 0 => Decision::User(id),
            -1 => Decision::Reject("not authorized".into()),
            -2 => Decision::Pending,
            -3 => Decision::Reject("the backend failed to decide (error)".into()),
            other => Decision::Reject(format!(
                "the backend answered {other}, which is not a valid decision"
            )),
        }
    }

    /// The meaning of a new_node callback's answer: "primary", "secondary", -1, -2 or -3.
    pub fn from_node_answer(answer: &str) -> Decision {
        match answer.trim() {
            "primary" => Decision::Node(Role::Primary),
            "secondary" => Decision::Node(Role::Secondary),
            code => match code.parse::<i64>() {
                Ok(c) if c >= 0 => Decision::Reject(format!(
                    "new_node answered {c}; expected \"primary\" or \"secondary\""
                )),
                Ok(c) => Decision::from_user_code(c),
                Err(_) => Decision::Reject(format!(
                    "new_node answered `{code}`; expected \"primary\" or \"secondary\""
                )),
            },
        }
    }
}

/// A deciding function registered by the backend. It runs on a worker thread.
pub type Callback = Arc<dyn Fn(&AuthRequest) -> Decision + Send + Sync>;

/// The callbacks registered on a primary, one per action.
#[derive(Default)]
pub struct Callbacks {
    slots: RwLock<Vec<(Action, Callback)>>,
}

impl Callbacks {
    pub fn set(&self, action: Action, f: Callback) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(a, _)| *a != action);
        slots.push((action, f));
    }
    pub fn get(&self, action: Action) -> Option<Callback> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .find(|(a, _)| *a == action)
            .map(|(_, f)| f.clone())
    }
}

/// Run a callback, turning a panic into a rejection: a broken callback must not take down the
/// session task, nor leave the device waiting forever.
pub fn call(f: &Callback, req: &AuthRequest) -> Decision {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(req))) {
        Ok(d) => d,
        Err(_) => {
            tracing::warn!(action = req.action.as_str(), pubkey = %req.pubkey, "authorization callback panicked");
            Decision::Reject("the backend failed to decide (error)".into())
        }
    }
}

/// `PRAGMA authorize_user="<pubkey>:<user_id>"` / `authorize_node="<pubkey>:primary|secondary"`.
pub fn parse_authorize(pragma: &str, value: Option<&str>) -> Result<(String, Decision)> {
    let bad = |reason: String| Error::Pragma {
        name: pragma.to_string(),
        reason,
    };
    let value = value.ok_or_else(|| bad("give a value: \"<public key>:<decision>\"".into()))?;
    let (key, answer) = value
        .rsplit_once(':')
        .ok_or_else(|| bad(format!("`{value}` is not \"<public key>:<decision>\"")))?;
    // Taken exactly as written: `<key>: 1` (with a space) is a mistake, not a decision.
    let key = key.to_ascii_lowercase();
    crate::crypto::PublicKey::from_hex(&key).map_err(|_| {
        bad(format!(
            "`{key}` is not a public key (64 hex digits, as PRAGMA nodes shows)"
        ))
    })?;
    let decision = match pragma.trim_start_matches("pre") {
        "authorize_user" => {
            let code: i64 = answer.parse().map_err(|_| {
                bad(format!(
                    "`{answer}` is not a user id (a number; 0 = new user, -1 = reject)"
                ))
            })?;
            if code < -1 {
                return Err(bad(format!(
                    "`{code}` is not a decision: use a user id, 0 (new user) or -1 (reject)"
                )));
            }
            Decision::from_user_code(code)
        }
        _ => match answer {
            "primary" | "secondary" | "-1" => Decision::from_node_answer(answer),
            _ => {
                return Err(bad(format!(
                    "`{answer}` is not primary, secondary or -1 (reject)"
                )))
            }
        },
    };
    Ok((key, decision))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_codes_mean_what_the_spec_says() {
        assert_eq!(Decision::from_user_code(42), Decision::User(42));
        assert_eq!(Decision::from_user_code(0), Decision::User(0));
        assert!(matches!(Decision::from_user_code(-1), Decision::Reject(_)));
        assert_eq!(Decision::from_user_code(-2), Decision::Pending);
        assert!(matches!(Decision::from_user_code(-3), Decision::Reject(_)));
        assert!(matches!(Decision::from_user_code(-9), Decision::Reject(_)));
        assert_eq!(
            Decision::from_node_answer("primary"),
            Decision::Node(Role::Primary)
        );
        assert_eq!(
            Decision::from_node_answer("secondary"),
            Decision::Node(Role::Secondary)
        );
        assert_eq!(Decision::from_node_answer("-2"), Decision::Pending);
        assert!(matches!(
            Decision::from_node_answer("-1"),
            Decision::Reject(_)
        ));
        assert!(matches!(
            Decision::from_node_answer("boss"),
            Decision::Reject(_)
        ));
    }

    #[test]
    fn authorize_pragmas_parse_and_refuse_garbage() {
        let k = crate::crypto::NodeKeys::generate().public_key().to_hex();
        assert_eq!(
            parse_authorize("authorize_user", Some(&format!("{k}:7"))).unwrap(),
            (k.clone(), Decision::User(7))
        );
        assert!(matches!(
            parse_authorize("authorize_user", Some(&format!("{k}:-1")))
                .unwrap()
                .1,
            Decision::Reject(_)
        ));
        assert_eq!(
            parse_authorize("authorize_node", Some(&format!("{k}:secondary")))
                .unwrap()
                .1,
            Decision::Node(Role::Secondary)
        );
        for bad in [
            None,
            Some("nocolon".to_string()),
            Some("zz:1".to_string()),
            Some(format!("{k}:x")),
            Some(format!("{k}:-2")),
            Some(format!("{k}:")),
        ] {
            assert!(
                parse_authorize("authorize_user", bad.as_deref()).is_err(),
                "{bad:?}"
            );
        }
        for bad in [
            format!("{k}:boss"),
            format!("{k}:-2"),
            format!("{k}:-3"),
            format!("{k}:5"),
        ] {
            assert!(
                parse_authorize("authorize_node", Some(&bad)).is_err(),
                "{bad}"
            );
        }
    }
}
