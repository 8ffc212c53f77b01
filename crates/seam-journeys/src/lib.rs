//! Journeys: trigger chains across channels, under one set of delivery rules.
//!
//! - [`definition`]: the definition format (YAML or JSON) and its validation with named problems.
//! - [`run`]: the run state machine — waits, branches, splits, sends, cascades, goals — as plain data and
//!   deterministic steps, with an idempotency key on every message.
//! - [`governance`]: consent, suppression, exclusion, caps, quiet hours: may this message go now?
//! - [`template`]: Liquid templates with a variant per channel, checked when saved.
//! - [`local`]: local times of day in a person's time zone.
//! - [`simulate`]: a scripted world on a virtual clock that runs all of the above, for `seam simulate` and tests.
//!
//! Nothing here does IO or reads a clock.

pub mod channel;
pub mod definition;
pub mod governance;
pub mod local;
pub mod run;
pub mod simulate;
pub mod template;

pub use channel::{Category, Channel, Outcome};
pub use definition::{from_yaml, validate, Catalog, Journey, JourneySpec, Problem};
pub use run::{Effect, Message, Run};
pub use template::{Template, TemplateSpec};
