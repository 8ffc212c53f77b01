//! The Segment-spec wire format, kept apart from storage and HTTP.
//!
//! - [`body`]: the request body as SDKs send it (JSON, `text/plain` JSON, the form-encoded `data=` wrapping),
//!   decoded into JSON text with body-level limits, checked, and taken apart at the top level ([`Body`]).
//! - [`call`]: one call (`identify`, `track`, …) or a batch, validated field by field into the JSON of
//!   [`seam_core::Event`]s; every rejected event is named by its index with the field and the reason.
//! - `json`: JSON read without building it as a tree (members left as text, copied into the stored event).
//! - [`normalize`]: e-mail canonical form, E.164 phones with a default region, junk identifier values.
//!
//! Nothing here does IO or reads a clock: the receive time is passed in.

pub mod body;
pub mod call;
mod json;
pub mod normalize;

pub use body::{decode_body, Body, BodyError, Decoded};
pub use call::{parse_call, Accepted, CallKind, FieldError, IngestOptions, Limits, Parsed};
