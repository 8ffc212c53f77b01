//! The tree of a segment definition. Its serde form is the JSON the API and the console exchange.

use serde::{Deserialize, Serialize};

/// A condition on a person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Expr {
    And {
        args: Vec<Expr>,
    },
    Or {
        args: Vec<Expr>,
    },
    Not {
        arg: Box<Expr>,
    },
    /// A profile trait: `trait plan = "gold"`.
    Trait {
        path: Vec<String>,
        test: Test,
    },
    /// The person can be reached by an identifier of this type: `has email`, `has push_token`.
    Has {
        identifier: String,
    },
    /// The person consents to a channel, optionally for a topic: `consents to sms for marketing`.
    Consent {
        channel: String,
        topic: Option<String>,
    },
    /// Membership of another segment: `in segment "VIP"`.
    InSegment {
        segment: String,
    },
    /// A measure of the person's events compared with a value, another measure, or a point in time.
    Compare {
        left: Metric,
        cmp: Cmp,
        right: Operand,
    },
    /// `A then B within T`, or with `negated`, `A not followed by B within T`.
    Sequence {
        first: EventSel,
        then: EventSel,
        within: Duration,
        negated: bool,
    },
    /// Some value of an event property (one product, one category) satisfies `expr`, in which filters
    /// `property = item` refer to that value.
    ForSome {
        property: Vec<String>,
        expr: Box<Expr>,
    },
}

impl Expr {
    /// The segments this expression refers to by name (`in segment "…"`), directly, in order of appearance.
    pub fn references(&self) -> Vec<&str> {
        fn walk<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
            match e {
                Expr::And { args } | Expr::Or { args } => args.iter().for_each(|a| walk(a, out)),
                Expr::Not { arg } => walk(arg, out),
                Expr::ForSome { expr, .. } => walk(expr, out),
                Expr::InSegment { segment } => out.push(segment),
                Expr::Trait { .. }
                | Expr::Has { .. }
                | Expr::Consent { .. }
                | Expr::Compare { .. }
                | Expr::Sequence { .. } => {}
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }
}

/// A test of one value (a trait, or an event property in a filter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "test", rename_all = "snake_case")]
pub enum Test {
    Compare {
        cmp: Cmp,
        value: Literal,
    },
    Contains {
        value: String,
    },
    In {
        values: Vec<Literal>,
    },
    IsSet,
    IsNotSet,
    /// Equals the value chosen by the enclosing `for some` (filters only).
    IsItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    #[serde(rename = "=")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl Cmp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
        }
    }
}

/// A constant in a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Literal {
    Bool(bool),
    Number(f64),
    String(String),
}

/// Which events a measure or a sequence looks at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSel {
    /// The track event name (`Product Viewed`).
    pub event: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

/// `category = "coffee"`, `price > 1000`, `product_id = item`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    pub property: Vec<String>,
    pub test: Test,
}

/// A number computed from the person's events in a time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub agg: Agg,
    pub of: EventSel,
    pub window: Window,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fn", rename_all = "snake_case")]
pub enum Agg {
    Count,
    Sum {
        property: Vec<String>,
    },
    Avg {
        property: Vec<String>,
    },
    Min {
        property: Vec<String>,
    },
    Max {
        property: Vec<String>,
    },
    Distinct {
        property: Vec<String>,
    },
    /// The time of the first such event.
    FirstTime,
    /// The time of the last such event.
    LastTime,
    /// The property's value on the most recent such event (`last product_id of "Product Viewed"`).
    LastValue {
        property: Vec<String>,
    },
    /// The property's most frequent value; a tie goes to the most recent (`most frequent category of …`).
    MostFrequent {
        property: Vec<String>,
    },
    /// The hour of the day (0–23, UTC) at which such events happen most often.
    PreferredHour,
}

impl Agg {
    /// Whether the measure is a point in time (compared with `N days ago`) rather than a number.
    pub fn is_time(&self) -> bool {
        matches!(self, Self::FirstTime | Self::LastTime)
    }

    /// Whether the measure is a value of any type (a string, a number, a boolean) rather than a number.
    pub fn is_value(&self) -> bool {
        matches!(self, Self::LastValue { .. } | Self::MostFrequent { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Window {
    Ever,
    /// The last `duration`, up to now.
    Last {
        duration: Duration,
    },
    /// From `from` ago until `to` ago (`from` is the longer one).
    Between {
        from: Duration,
        to: Duration,
    },
}

/// The right side of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Operand {
    Value {
        value: Literal,
    },
    Metric {
        metric: Metric,
    },
    /// A point in time: now minus `duration`.
    Ago {
        duration: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duration {
    pub amount: u32,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Minutes,
    Hours,
    Days,
    Weeks,
}

impl Unit {
    pub fn millis(self) -> i64 {
        match self {
            Self::Minutes => 60_000,
            Self::Hours => 3_600_000,
            Self::Days => 86_400_000,
            Self::Weeks => 7 * 86_400_000,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minutes => "minutes",
            Self::Hours => "hours",
            Self::Days => "days",
            Self::Weeks => "weeks",
        }
    }
}

impl Duration {
    pub fn millis(self) -> i64 {
        i64::from(self.amount) * self.unit.millis()
    }
}
