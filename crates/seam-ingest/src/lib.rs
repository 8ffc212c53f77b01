//! The Segment-spec wire format, kept apart from storage and HTTP.
//!
//! - [`body`]: the request body as SDKs send it (JSON, `text/plain` JSON, the form-encoded `data=` wrapping),
//!   decoded into JSON with body-level limits.
//! - [`call`]: one call (`identify`, `track`, …) or a batch, validated field by field into [`seam_core::Event`]s;
//!   every rejected event is named by its index with the field and the reason.
//! - [`normalize`]: e-mail canonical form, E.164 phones with a default region, junk identifier values.
//!
//! Nothing here does IO or reads a clock: the receive time is passed in.

pub mod body;
pub mod call;
pub mod normalize;

pub use body::{decode_body, BodyError};
pub use call::{parse_call, Accepted, CallKind, FieldError, IngestOptions, Limits, Parsed};
