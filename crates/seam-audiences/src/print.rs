//! Tree → canonical text. The output parses back to the same tree.

use crate::ast::{Agg, Duration, EventSel, Expr, Filter, Literal, Metric, Operand, Test, Window};

/// Words the parser gives a meaning to; names spelled like them are written in backticks.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "not",
    "trait",
    "has",
    "consents",
    "to",
    "for",
    "in",
    "segment",
    "some",
    "of",
    "where",
    "last",
    "first",
    "time",
    "between",
    "ago",
    "ever",
    "then",
    "within",
    "followed",
    "by",
    "item",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "distinct",
    "contains",
    "is",
    "set",
    "true",
    "false",
    "most",
    "preferred",
];

/// The canonical text of a definition.
pub fn print(e: &Expr) -> String {
    let mut out = String::new();
    expr(e, &mut out);
    out
}

fn expr(e: &Expr, out: &mut String) {
    match e {
        Expr::Or { args } => join(args, " or ", out, |a| matches!(a, Expr::Or { .. })),
        Expr::And { args } => join(args, " and ", out, |a| {
            matches!(a, Expr::Or { .. } | Expr::And { .. })
        }),
        Expr::Not { arg } => {
            out.push_str("not ");
            grouped(
                arg,
                out,
                matches!(**arg, Expr::Or { .. } | Expr::And { .. }),
            );
        }
        Expr::Trait { path: p, test: t } => {
            out.push_str("trait ");
            path(p, out);
            test(t, out);
        }
        Expr::Has { identifier } => {
            out.push_str("has ");
            name(identifier, out);
        }
        Expr::Consent { channel, topic } => {
            out.push_str("consents to ");
            name(channel, out);
            if let Some(t) = topic {
                out.push_str(" for ");
                name(t, out);
            }
        }
        Expr::InSegment { segment } => {
            out.push_str("in segment ");
            string(segment, out);
        }
        Expr::Compare { left, cmp, right } => {
            metric(left, out);
            out.push(' ');
            out.push_str(cmp.as_str());
            out.push(' ');
            match right {
                Operand::Value { value } => literal(value, out),
                Operand::Metric { metric: m } => metric(m, out),
                Operand::Ago { duration: d } => {
                    duration(*d, out);
                    out.push_str(" ago");
                }
            }
        }
        Expr::Sequence {
            first,
            then,
            within,
            negated,
        } => {
            event_sel(first, out);
            out.push_str(if *negated {
                " not followed by "
            } else {
                " then "
            });
            event_sel(then, out);
            out.push_str(" within ");
            duration(*within, out);
        }
        Expr::ForSome {
            property,
            expr: inner,
        } => {
            out.push_str("for some ");
            path(property, out);
            out.push_str(": (");
            expr(inner, out);
            out.push(')');
        }
    }
}

fn join(args: &[Expr], sep: &str, out: &mut String, needs_parens: impl Fn(&Expr) -> bool) {
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        grouped(a, out, needs_parens(a));
    }
}

fn grouped(e: &Expr, out: &mut String, parens: bool) {
    if parens {
        out.push('(');
    }
    expr(e, out);
    if parens {
        out.push(')');
    }
}

/// The canonical text of a measure (a computed trait's definition).
pub fn print_metric(m: &Metric) -> String {
    let mut out = String::new();
    metric(m, &mut out);
    out
}

fn metric(m: &Metric, out: &mut String) {
    match &m.agg {
        Agg::Count => out.push_str("count"),
        Agg::FirstTime => out.push_str("first time"),
        Agg::LastTime => out.push_str("last time"),
        Agg::PreferredHour => out.push_str("preferred hour"),
        Agg::LastValue { property } => {
            out.push_str("last ");
            path(property, out);
        }
        Agg::MostFrequent { property } => {
            out.push_str("most frequent ");
            path(property, out);
        }
        Agg::Sum { property }
        | Agg::Avg { property }
        | Agg::Min { property }
        | Agg::Max { property }
        | Agg::Distinct { property } => {
            out.push_str(match &m.agg {
                Agg::Sum { .. } => "sum ",
                Agg::Avg { .. } => "avg ",
                Agg::Min { .. } => "min ",
                Agg::Max { .. } => "max ",
                _ => "distinct ",
            });
            path(property, out);
        }
    }
    out.push_str(" of ");
    event_sel(&m.of, out);
    match &m.window {
        Window::Ever => {}
        Window::Last { duration: d } => {
            out.push_str(" in last ");
            duration(*d, out);
        }
        Window::Between { from, to } => {
            out.push_str(" between ");
            duration(*from, out);
            out.push_str(" ago and ");
            duration(*to, out);
            out.push_str(" ago");
        }
    }
}

fn event_sel(s: &EventSel, out: &mut String) {
    string(&s.event, out);
    for (i, Filter { property, test: t }) in s.filters.iter().enumerate() {
        out.push_str(if i == 0 { " where " } else { " and " });
        path(property, out);
        test(t, out);
    }
}

fn test(t: &Test, out: &mut String) {
    match t {
        Test::Compare { cmp, value } => {
            out.push(' ');
            out.push_str(cmp.as_str());
            out.push(' ');
            literal(value, out);
        }
        Test::Contains { value } => {
            out.push_str(" contains ");
            string(value, out);
        }
        Test::In { values } => {
            out.push_str(" in (");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                literal(v, out);
            }
            out.push(')');
        }
        Test::IsSet => out.push_str(" is set"),
        Test::IsNotSet => out.push_str(" is not set"),
        Test::IsItem => out.push_str(" = item"),
    }
}

fn duration(d: Duration, out: &mut String) {
    out.push_str(&format!("{} {}", d.amount, d.unit.as_str()));
}

fn literal(l: &Literal, out: &mut String) {
    match l {
        Literal::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Literal::Number(n) => out.push_str(&format!("{n}")),
        Literal::String(s) => string(s, out),
    }
}

fn string(s: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(s).expect("strings serialise"));
}

fn path(p: &[String], out: &mut String) {
    for (i, part) in p.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        name(part, out);
    }
}

fn name(n: &str, out: &mut String) {
    let plain = n
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&n);
    if plain {
        out.push_str(n);
    } else {
        out.push('`');
        out.push_str(n);
        out.push('`');
    }
}
