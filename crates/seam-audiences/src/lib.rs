//! Segments: who belongs to an audience, written in a language a marketer can read.
//!
//! - [`ast`]: the tree of a definition — the JSON form the API and the console exchange (serde).
//! - [`parse`]: text → tree, with errors that name the line and column and say what was expected, and limits on
//!   size and depth.
//! - [`print`]: tree → canonical text; `parse(print(t)) == t` for every tree (tested by property).
//! - [`eval`]: evaluation from scratch against one person's data, and `explain`: why a person is or is not
//!   in a segment, condition by condition, with the values that decided it; `next_change`: when time alone
//!   may change the result.
//! - [`digest`]: the part of a person's history that a set of definitions can still read, kept event by event.
//!
//! The grammar and examples are in `docs/segments.md`. Nothing here does IO.

pub mod ast;
pub mod digest;
pub mod eval;
pub mod parse;
pub mod print;

pub use ast::Expr;
pub use eval::{
    evaluate, event_matches, explain, measure, next_change, Explanation, Library, Person,
    PersonEvent,
};
pub use parse::{parse, parse_duration, parse_filters, parse_metric, ParseError};
pub use print::{print, print_metric};

/// The example segments shipped with Seam: (name, definition).
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "Viewed the same product three times without adding it to the cart",
        r#"for some product_id: (
    count of "Product Viewed" where product_id = item in last 7 days >= 3
    and count of "Product Added" where product_id = item in last 7 days = 0
)"#,
    ),
    (
        "Calls often but does not buy",
        r#"count of "Call Started" in last 30 days >= 3
and count of "Order Completed" in last 30 days = 0"#,
    ),
    (
        "Last purchase over 3 months ago and buying less and less",
        r#"last time of "Order Completed" < 90 days ago
and count of "Order Completed" in last 180 days < count of "Order Completed" between 360 days ago and 180 days ago"#,
    ),
];

#[cfg(test)]
mod tests;
