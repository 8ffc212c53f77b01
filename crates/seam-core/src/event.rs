//! The normalised event: what ingest makes of a Segment call, and what the event log stores.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Identifier, Millis};

/// The call an event came from, or the system event it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
    /// A profile was merged into another (system event).
    Merge,
    /// Two profiles shared an identifier but could not be merged (system event).
    IdentityConflict,
    /// A segment was created or changed; its properties hold the definition (system event).
    SegmentDefined,
    /// A segment was deleted (system event).
    SegmentDeleted,
    /// A person entered a segment (system event).
    SegmentEntered,
    /// A person left a segment (system event).
    SegmentExited,
    /// A computed trait was defined or changed (system event).
    ComputedTraitDefined,
    /// A computed trait was deleted (system event).
    ComputedTraitDeleted,
    /// A message template was saved; its properties hold the definition (system event).
    TemplateDefined,
    /// A message template was deleted (system event).
    TemplateDeleted,
    /// A journey was saved; its properties hold the definition (system event).
    JourneyDefined,
    /// A journey was deleted (system event).
    JourneyDeleted,
    /// A journey was activated or paused (system event).
    JourneyStatus,
    /// A run of a journey was asked for by the API (system event).
    JourneyEnter,
    /// A journey run moved: its new state and what it did (system event).
    JourneyStep,
    /// A message was handed to its channel, failed an attempt, went to the dead letters or was requeued
    /// (system event).
    MessageDelivery,
    /// An address was put on the suppression list or taken off it (system event).
    Suppression,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
            Self::Merge => "merge",
            Self::IdentityConflict => "identity_conflict",
            Self::SegmentDefined => "segment_defined",
            Self::SegmentDeleted => "segment_deleted",
            Self::SegmentEntered => "segment_entered",
            Self::SegmentExited => "segment_exited",
            Self::ComputedTraitDefined => "computed_trait_defined",
            Self::ComputedTraitDeleted => "computed_trait_deleted",
            Self::TemplateDefined => "template_defined",
            Self::TemplateDeleted => "template_deleted",
            Self::JourneyDefined => "journey_defined",
            Self::JourneyDeleted => "journey_deleted",
            Self::JourneyStatus => "journey_status",
            Self::JourneyEnter => "journey_enter",
            Self::JourneyStep => "journey_step",
            Self::MessageDelivery => "message_delivery",
            Self::Suppression => "suppression",
        }
    }

    pub fn kind(self) -> EventKind {
        match self {
            Self::Merge
            | Self::IdentityConflict
            | Self::SegmentDefined
            | Self::SegmentDeleted
            | Self::SegmentEntered
            | Self::SegmentExited
            | Self::ComputedTraitDefined
            | Self::ComputedTraitDeleted
            | Self::TemplateDefined
            | Self::TemplateDeleted
            | Self::JourneyDefined
            | Self::JourneyDeleted
            | Self::JourneyStatus
            | Self::JourneyEnter
            | Self::JourneyStep
            | Self::MessageDelivery
            | Self::Suppression => EventKind::System,
            _ => EventKind::Received,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "identify" => Self::Identify,
            "track" => Self::Track,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            "merge" => Self::Merge,
            "identity_conflict" => Self::IdentityConflict,
            "segment_defined" => Self::SegmentDefined,
            "segment_deleted" => Self::SegmentDeleted,
            "segment_entered" => Self::SegmentEntered,
            "segment_exited" => Self::SegmentExited,
            "computed_trait_defined" => Self::ComputedTraitDefined,
            "computed_trait_deleted" => Self::ComputedTraitDeleted,
            "template_defined" => Self::TemplateDefined,
            "template_deleted" => Self::TemplateDeleted,
            "journey_defined" => Self::JourneyDefined,
            "journey_deleted" => Self::JourneyDeleted,
            "journey_status" => Self::JourneyStatus,
            "journey_enter" => Self::JourneyEnter,
            "journey_step" => Self::JourneyStep,
            "message_delivery" => Self::MessageDelivery,
            "suppression" => Self::Suppression,
            _ => return None,
        })
    }
}

/// Whether an event came from outside (and counts for the person) or was written by Seam itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Received,
    System,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::System => "system",
        }
    }
}

/// One normalised event as the log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The track event's name, or the page/screen name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// For alias: the id the person was known by before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Every usable identifier the event carries, normalised (junk values already dropped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub context: Map<String, Value>,
    /// When it happened, corrected for the sender's clock skew.
    pub timestamp: Millis,
    pub received_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<Millis>,
    /// The library or system that sent it (`analytics-python`, `seam`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The channel it came through (`web`, `mobile`, `server`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl Event {
    /// A system event with no identifiers of its own.
    pub fn system(
        message_id: String,
        kind: EventType,
        at: Millis,
        properties: Map<String, Value>,
    ) -> Self {
        Self {
            message_id,
            kind,
            event: None,
            user_id: None,
            anonymous_id: None,
            previous_id: None,
            group_id: None,
            identifiers: Vec::new(),
            traits: Map::new(),
            properties,
            context: Map::new(),
            timestamp: at,
            received_at: at,
            sent_at: None,
            original_timestamp: None,
            source: Some("seam".to_owned()),
            channel: None,
        }
    }
}
