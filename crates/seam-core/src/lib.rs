//! Seam's shared domain vocabulary. It does no IO.
//!
//! - [`clock`]: the injected [`Clock`](clock::Clock) — nothing in Seam reads the system clock elsewhere.
//! - [`ids`]: identifiers people see ([`ProfileId`](ids::ProfileId), `prof_…`) and internal ones.
//! - [`identifier`]: an identity of a person (`email:anna@example.com`) and the per-workspace rules for each type.
//! - [`event`]: the normalised event every projection is built from, as stored in the event log.
//! - [`histogram`]: a lock-free latency histogram, shown by `/metrics`.

pub mod clock;
pub mod event;
pub mod histogram;
pub mod identifier;
pub mod ids;

pub use clock::{Clock, Millis};
pub use event::{Event, EventKind, EventType};
pub use identifier::{Identifier, IdentifierRules, IdentifierType, TypeRule};
pub use ids::{ProfileId, Seq};
