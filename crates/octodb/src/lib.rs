//! octodb: a replicated SQLite for apps and their backend.
//!
//! Layers, each depending only on those listed before it (see ARCHITECTURE.md):
//! `uri` → `store` → `log` → `crypto` → `net` → `node` → `api`.

pub mod crypto;
pub mod net;
pub mod uri;
