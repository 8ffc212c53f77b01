//! Text → tree. A recursive-descent parser over a small lexer; every error names the line and column where it
//! was found and says what was expected there.

use std::fmt;

use crate::ast::{
    Agg, Cmp, Duration, EventSel, Expr, Filter, Literal, Metric, Operand, Test, Unit, Window,
};

/// Largest definition accepted, in bytes.
pub const MAX_BYTES: usize = 64 * 1024;
/// Deepest nesting of parentheses, `not` and `for some`.
pub const MAX_DEPTH: usize = 32;
/// Most conditions in one definition.
pub const MAX_CONDITIONS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Parses a definition in the segment language.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(text)?;
    let expr = p.expr()?;
    match p.peek() {
        Tok::End => Ok(expr),
        _ => Err(p.error("expected `and`, `or` or the end of the definition")),
    }
}

/// Parses a measure alone (`sum revenue of "Order Completed" in last 90 days`), as computed traits are defined.
pub fn parse_metric(text: &str) -> Result<Metric, ParseError> {
    let mut p = Parser::new(text)?;
    if !p.is_aggregate_start() {
        return Err(p.error(
            "expected a measure such as `count of \"Event\"`, `sum revenue of …`, `last product_id of …`, \
             `most frequent category of …` or `preferred hour of …`",
        ));
    }
    let m = p.metric()?;
    match p.peek() {
        Tok::End => Ok(m),
        _ => Err(p.error("expected the end of the measure")),
    }
}

/// Parses property filters alone, the part after `where` (`category = "coffee" and price > 1000`), as journeys
/// filter the events that trigger, end or wake them.
pub fn parse_filters(text: &str) -> Result<Vec<Filter>, ParseError> {
    let mut p = Parser::new(text)?;
    let mut filters = Vec::new();
    loop {
        let property = p.path("an event property")?;
        let test = p.test(false)?;
        filters.push(Filter { property, test });
        if !p.eat_word("and") {
            break;
        }
    }
    match p.peek() {
        Tok::End => Ok(filters),
        _ => Err(p.error("expected `and` and another property test, or the end of the filter")),
    }
}

/// Parses a duration alone (`20 minutes`, `3 hours`, `1 day`), as journeys write their waits.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let mut p = Parser::new(text)?;
    let d = p.duration("a duration")?;
    match p.peek() {
        Tok::End => Ok(d),
        _ => Err(p.error("expected the end of the duration")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    /// A name written in backticks: never a keyword.
    Name(String),
    Str(String),
    Num(f64),
    Punct(&'static str),
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::Name(w) => write!(f, "`{w}`"),
            Tok::Str(s) => write!(f, "the string {s:?}"),
            Tok::Num(n) => write!(f, "the number {n}"),
            Tok::Punct(p) => write!(f, "`{p}`"),
            Tok::End => write!(f, "the end of the definition"),
        }
    }
}

struct Token {
    tok: Tok,
    line: usize,
    column: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line, mut col) = (0, 1, 1);
    let err = |line, column, message: String| ParseError {
        line,
        column,
        message,
    };
    while i < chars.len() {
        let c = chars[i];
        let (tl, tc) = (line, col);
        let mut advance = |n: usize, i: &mut usize| {
            for _ in 0..n {
                if chars[*i] == '\n' {
                    line += 1;
                    col = 1;
                } else {
                    col += 1;
                }
                *i += 1;
            }
        };
        if c.is_whitespace() {
            advance(1, &mut i);
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                advance(1, &mut i);
            }
            continue;
        }
        let tok = if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                advance(1, &mut i);
            }
            Tok::Word(chars[start..i].iter().collect())
        } else if c == '`' {
            advance(1, &mut i);
            let start = i;
            while i < chars.len() && chars[i] != '`' && chars[i] != '\n' {
                advance(1, &mut i);
            }
            if i >= chars.len() || chars[i] != '`' {
                return Err(err(tl, tc, "a name in backticks is not closed".into()));
            }
            let name: String = chars[start..i].iter().collect();
            advance(1, &mut i);
            if name.is_empty() {
                return Err(err(tl, tc, "a name in backticks is empty".into()));
            }
            Tok::Name(name)
        } else if c == '"' {
            let start = i;
            advance(1, &mut i);
            loop {
                match chars.get(i) {
                    None | Some('\n') => {
                        return Err(err(tl, tc, "a string is not closed with `\"`".into()))
                    }
                    Some('\\') => advance(2.min(chars.len() - i), &mut i),
                    Some('"') => {
                        advance(1, &mut i);
                        break;
                    }
                    Some(_) => advance(1, &mut i),
                }
            }
            let raw: String = chars[start..i].iter().collect();
            let s: String = serde_json::from_str(&raw).map_err(|_| {
                err(
                    tl,
                    tc,
                    format!("{raw} is not a valid string (check its escapes)"),
                )
            })?;
            Tok::Str(s)
        } else if c.is_ascii_digit()
            || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            advance(1, &mut i);
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                advance(1, &mut i);
            }
            let raw: String = chars[start..i].iter().collect();
            let n: f64 = raw
                .parse()
                .map_err(|_| err(tl, tc, format!("{raw} is not a number")))?;
            if !n.is_finite() {
                return Err(err(tl, tc, format!("{raw} is too large")));
            }
            Tok::Num(n)
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let p = match two.as_str() {
                "!=" => "!=",
                "<=" => "<=",
                ">=" => ">=",
                _ => match c {
                    '(' => "(",
                    ')' => ")",
                    ',' => ",",
                    ':' => ":",
                    '.' => ".",
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    _ => return Err(err(tl, tc, format!("unexpected character {c:?}"))),
                },
            };
            advance(p.len(), &mut i);
            Tok::Punct(p)
        };
        out.push(Token {
            tok,
            line: tl,
            column: tc,
        });
    }
    out.push(Token {
        tok: Tok::End,
        line,
        column: col,
    });
    Ok(out)
}

/// Words that start a condition, so that a filter's `and` is not taken for the next condition's.
const CONDITION_WORDS: &[&str] = &[
    "trait",
    "has",
    "consents",
    "in",
    "for",
    "not",
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "distinct",
    "first",
    "last",
    "most",
    "preferred",
];

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: usize,
    conditions: usize,
    item_scopes: usize,
}

impl Parser {
    /// Checks the size and reads the tokens of `text`.
    fn new(text: &str) -> Result<Self, ParseError> {
        if text.len() > MAX_BYTES {
            return Err(ParseError {
                line: 1,
                column: 1,
                message: format!(
                    "the definition is {} bytes; the limit is {MAX_BYTES}",
                    text.len()
                ),
            });
        }
        Ok(Self {
            tokens: lex(text)?,
            pos: 0,
            depth: 0,
            conditions: 0,
            item_scopes: 0,
        })
    }

    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].tok
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        &self.tokens[(self.pos + ahead).min(self.tokens.len() - 1)].tok
    }

    /// The current token, moving past it (past the end too, so that stepping back is always exact).
    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos += 1;
        t
    }

    fn error(&self, expected: &str) -> ParseError {
        let t = &self.tokens[self.pos.min(self.tokens.len() - 1)];
        ParseError {
            line: t.line,
            column: t.column,
            message: format!("{expected}, found {}", t.tok),
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Word(x) if x == w)
    }

    fn eat_word(&mut self, w: &str) -> bool {
        if self.is_word(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_word(&mut self, w: &str, what: &str) -> Result<(), ParseError> {
        if self.eat_word(w) {
            Ok(())
        } else {
            Err(self.error(&format!("expected `{w}` {what}")))
        }
    }

    fn expect_punct(&mut self, p: &'static str, what: &str) -> Result<(), ParseError> {
        if self.peek() == &Tok::Punct(p) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{p}` {what}")))
        }
    }

    fn nest<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<T, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(&format!(
                "the definition is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        let mut args = vec![self.and()?];
        while self.eat_word("or") {
            args.push(self.and()?);
        }
        Ok(if args.len() == 1 {
            args.pop().expect("one")
        } else {
            Expr::Or { args }
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut args = vec![self.not()?];
        while self.eat_word("and") {
            args.push(self.not()?);
        }
        Ok(if args.len() == 1 {
            args.pop().expect("one")
        } else {
            Expr::And { args }
        })
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.eat_word("not") {
            return self.nest(|p| {
                Ok(Expr::Not {
                    arg: Box::new(p.not()?),
                })
            });
        }
        if self.peek() == &Tok::Punct("(") {
            self.pos += 1;
            let e = self.nest(Self::expr)?;
            self.expect_punct(")", "to close the parenthesis")?;
            return Ok(e);
        }
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(self.error(&format!(
                "the definition has more than {MAX_CONDITIONS} conditions"
            )));
        }
        self.condition()
    }

    fn condition(&mut self) -> Result<Expr, ParseError> {
        match self.peek().clone() {
            Tok::Word(w) => match w.as_str() {
                "trait" => {
                    self.pos += 1;
                    let path = self.path("a trait name after `trait`")?;
                    let test = self.test(false)?;
                    Ok(Expr::Trait { path, test })
                }
                "has" => {
                    self.pos += 1;
                    let identifier = self.name("an identifier type after `has` (email, phone, push_token, …)")?;
                    Ok(Expr::Has { identifier })
                }
                "consents" => {
                    self.pos += 1;
                    self.expect_word("to", "after `consents`")?;
                    let channel = self.name("a channel after `consents to` (email, sms, push, …)")?;
                    let topic = if self.eat_word("for") { Some(self.name("a topic after `for`")?) } else { None };
                    Ok(Expr::Consent { channel, topic })
                }
                "in" => {
                    self.pos += 1;
                    self.expect_word("segment", "after `in` (as in `in segment \"VIP\"`)")?;
                    match self.next() {
                        Tok::Str(segment) => Ok(Expr::InSegment { segment }),
                        _ => {
                            self.pos -= 1;
                            Err(self.error("expected the segment's name as a string"))
                        }
                    }
                }
                "for" => {
                    self.pos += 1;
                    self.expect_word("some", "after `for` (as in `for some product_id: (…)`)")?;
                    let property = self.path("an event property after `for some`")?;
                    self.expect_punct(":", "after the property of `for some`")?;
                    self.expect_punct("(", "to open the conditions of `for some`")?;
                    self.item_scopes += 1;
                    let expr = self.nest(Self::expr);
                    self.item_scopes -= 1;
                    let expr = expr?;
                    self.expect_punct(")", "to close the conditions of `for some`")?;
                    Ok(Expr::ForSome { property, expr: Box::new(expr) })
                }
                "count" | "sum" | "avg" | "min" | "max" | "distinct" | "first" | "last" | "most"
                | "preferred" => self.comparison(),
                _ => Err(self.error(
                    "expected a condition: `trait …`, `has …`, `consents to …`, `in segment …`, `for some …`, \
                     an aggregate such as `count of \"Event\"`, or a sequence starting with an event name",
                )),
            },
            Tok::Str(_) => self.sequence(),
            _ => Err(self.error("expected a condition")),
        }
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let start = self.pos;
        let left = self.metric()?;
        let cmp = self.cmp().ok_or_else(|| {
            self.error("expected a comparison (=, !=, <, <=, >, >=) after the aggregate")
        })?;
        let right = if self.is_aggregate_start() {
            let m = self.metric()?;
            if m.agg.is_time() != left.agg.is_time() {
                return Err(self.error_at(
                    start,
                    "a time (first/last time of …) can only be compared with a time",
                ));
            }
            Operand::Metric { metric: m }
        } else if left.agg.is_time() {
            let d = self.duration("a point in time such as `90 days ago`")?;
            self.expect_word("ago", "after the duration (as in `90 days ago`)")?;
            Operand::Ago { duration: d }
        } else if left.agg.is_value() {
            let at = self.pos;
            let value = self.literal()?;
            if matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge)
                && !matches!(value, Literal::Number(_))
            {
                return Err(self.error_at(
                    at,
                    &format!(
                        "`{}` compares numbers; this value is not a number",
                        cmp.as_str()
                    ),
                ));
            }
            Operand::Value { value }
        } else {
            match self.next() {
                Tok::Num(n) => Operand::Value {
                    value: Literal::Number(n),
                },
                _ => {
                    self.pos -= 1;
                    return Err(
                        self.error("expected a number or another aggregate to compare with")
                    );
                }
            }
        };
        Ok(Expr::Compare { left, cmp, right })
    }

    fn error_at(&self, pos: usize, message: &str) -> ParseError {
        let t = &self.tokens[pos.min(self.tokens.len() - 1)];
        ParseError {
            line: t.line,
            column: t.column,
            message: message.to_owned(),
        }
    }

    fn is_aggregate_start(&self) -> bool {
        matches!(self.peek(), Tok::Word(w) if matches!(w.as_str(), "count" | "sum" | "avg" | "min" | "max" | "distinct" | "first" | "last" | "most" | "preferred"))
            && matches!(self.peek_at(1), Tok::Word(_) | Tok::Name(_))
    }

    fn metric(&mut self) -> Result<Metric, ParseError> {
        let agg = match self.next() {
            Tok::Word(w) => match w.as_str() {
                "count" => Agg::Count,
                "first" => {
                    self.expect_word("time", "after `first` (as in `first time of \"Event\"`)")?;
                    Agg::FirstTime
                }
                "last" if self.is_word("time") => {
                    self.pos += 1;
                    Agg::LastTime
                }
                "last" => Agg::LastValue {
                    property: self
                        .path("`time` or a property after `last` (as in `last product_id of …`)")?,
                },
                "most" => {
                    self.expect_word(
                        "frequent",
                        "after `most` (as in `most frequent category of …`)",
                    )?;
                    Agg::MostFrequent {
                        property: self.path("the property after `most frequent`")?,
                    }
                }
                "preferred" => {
                    self.expect_word(
                        "hour",
                        "after `preferred` (as in `preferred hour of \"Event\"`)",
                    )?;
                    Agg::PreferredHour
                }
                f => {
                    let property = self.path(&format!(
                        "the property to take the {f} of (as in `{f} revenue of …`)"
                    ))?;
                    match f {
                        "sum" => Agg::Sum { property },
                        "avg" => Agg::Avg { property },
                        "min" => Agg::Min { property },
                        "max" => Agg::Max { property },
                        _ => Agg::Distinct { property },
                    }
                }
            },
            _ => unreachable!("checked by the caller"),
        };
        self.expect_word("of", "before the event name")?;
        let of = self.event_sel()?;
        let window = self.window()?;
        Ok(Metric { agg, of, window })
    }

    fn event_sel(&mut self) -> Result<EventSel, ParseError> {
        let event = match self.next() {
            Tok::Str(s) => s,
            _ => {
                self.pos -= 1;
                return Err(
                    self.error("expected an event name as a string (as in \"Order Completed\")")
                );
            }
        };
        let mut filters = Vec::new();
        if self.eat_word("where") {
            loop {
                let property = self.path("an event property after `where`")?;
                let test = self.test(true)?;
                filters.push(Filter { property, test });
                // `and` continues the filter only when a property test follows, not another condition.
                let continues = self.is_word("and")
                    && match self.peek_at(1) {
                        Tok::Name(_) => true,
                        Tok::Word(w) => !CONDITION_WORDS.contains(&w.as_str()),
                        _ => false,
                    };
                if !continues {
                    break;
                }
                self.pos += 1;
            }
        }
        Ok(EventSel { event, filters })
    }

    fn window(&mut self) -> Result<Window, ParseError> {
        if self.is_word("in") && matches!(self.peek_at(1), Tok::Word(w) if w == "last") {
            self.pos += 2;
            return Ok(Window::Last {
                duration: self.duration("a duration after `in last`")?,
            });
        }
        let at = self.pos;
        if self.eat_word("between") {
            let from = self.duration("a duration after `between`")?;
            self.expect_word("ago", "after the first duration of `between`")?;
            self.expect_word("and", "between the two times of `between`")?;
            let to = self.duration("a duration after `and`")?;
            self.expect_word("ago", "after the second duration of `between`")?;
            if from.millis() <= to.millis() {
                return Err(self.error_at(
                    at,
                    "`between A ago and B ago` needs A longer than B (the window runs from A ago to B ago)",
                ));
            }
            return Ok(Window::Between { from, to });
        }
        if self.eat_word("ever") {
            return Ok(Window::Ever);
        }
        Ok(Window::Ever)
    }

    fn duration(&mut self, what: &str) -> Result<Duration, ParseError> {
        let amount = match self.next() {
            Tok::Num(n) if n >= 1.0 && n.fract() == 0.0 && n <= 1_000_000.0 => n as u32,
            _ => {
                self.pos -= 1;
                return Err(self.error(&format!(
                    "expected {what}: a whole number from 1 followed by a unit"
                )));
            }
        };
        let unit = match self.next() {
            Tok::Word(w) => match w.as_str() {
                "minute" | "minutes" => Unit::Minutes,
                "hour" | "hours" => Unit::Hours,
                "day" | "days" => Unit::Days,
                "week" | "weeks" => Unit::Weeks,
                _ => {
                    self.pos -= 1;
                    return Err(self.error("expected a unit: minutes, hours, days or weeks"));
                }
            },
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a unit: minutes, hours, days or weeks"));
            }
        };
        Ok(Duration { amount, unit })
    }

    fn sequence(&mut self) -> Result<Expr, ParseError> {
        let first = self.event_sel()?;
        let negated = if self.eat_word("then") {
            false
        } else if self.eat_word("not") {
            self.expect_word("followed", "after `not` (as in `not followed by`)")?;
            self.expect_word("by", "after `not followed`")?;
            true
        } else {
            return Err(self.error(
                "expected `then` or `not followed by` after the first event of a sequence",
            ));
        };
        let then = self.event_sel()?;
        self.expect_word("within", "after the second event of a sequence")?;
        let within = self.duration("a duration after `within`")?;
        Ok(Expr::Sequence {
            first,
            then,
            within,
            negated,
        })
    }

    fn cmp(&mut self) -> Option<Cmp> {
        let c = match self.peek() {
            Tok::Punct("=") => Cmp::Eq,
            Tok::Punct("!=") => Cmp::Ne,
            Tok::Punct("<") => Cmp::Lt,
            Tok::Punct("<=") => Cmp::Le,
            Tok::Punct(">") => Cmp::Gt,
            Tok::Punct(">=") => Cmp::Ge,
            _ => return None,
        };
        self.pos += 1;
        Some(c)
    }

    fn test(&mut self, in_filter: bool) -> Result<Test, ParseError> {
        if let Some(cmp) = self.cmp() {
            if in_filter && self.is_word("item") {
                if cmp != Cmp::Eq {
                    return Err(self.error("`item` can only be tested with `=`"));
                }
                if self.item_scopes == 0 {
                    return Err(self.error("`item` only has a meaning inside `for some …: (…)`"));
                }
                self.pos += 1;
                return Ok(Test::IsItem);
            }
            let at = self.pos;
            let value = self.literal()?;
            if matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge)
                && !matches!(value, Literal::Number(_))
            {
                return Err(self.error_at(
                    at,
                    &format!(
                        "`{}` compares numbers; this value is not a number",
                        cmp.as_str()
                    ),
                ));
            }
            return Ok(Test::Compare { cmp, value });
        }
        if self.eat_word("contains") {
            return match self.next() {
                Tok::Str(value) => Ok(Test::Contains { value }),
                _ => {
                    self.pos -= 1;
                    Err(self.error("`contains` takes a string"))
                }
            };
        }
        if self.eat_word("in") {
            self.expect_punct("(", "to open the list after `in`")?;
            let mut values = vec![self.literal()?];
            while self.peek() == &Tok::Punct(",") {
                self.pos += 1;
                values.push(self.literal()?);
            }
            self.expect_punct(")", "to close the list")?;
            return Ok(Test::In { values });
        }
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            self.expect_word("set", "after `is` (as in `is set` or `is not set`)")?;
            return Ok(if negated { Test::IsNotSet } else { Test::IsSet });
        }
        Err(self.error("expected a test: a comparison (=, !=, <, <=, >, >=), `contains`, `in (…)` or `is [not] set`"))
    }

    fn literal(&mut self) -> Result<Literal, ParseError> {
        match self.next() {
            Tok::Str(s) => Ok(Literal::String(s)),
            Tok::Num(n) => Ok(Literal::Number(n)),
            Tok::Word(w) if w == "true" => Ok(Literal::Bool(true)),
            Tok::Word(w) if w == "false" => Ok(Literal::Bool(false)),
            _ => {
                self.pos -= 1;
                Err(self.error("expected a value: a string, a number, true or false"))
            }
        }
    }

    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        match self.next() {
            Tok::Word(w) | Tok::Name(w) => Ok(w),
            _ => {
                self.pos -= 1;
                Err(self.error(&format!("expected {what}")))
            }
        }
    }

    fn path(&mut self, what: &str) -> Result<Vec<String>, ParseError> {
        let mut path = vec![self.name(what)?];
        while self.peek() == &Tok::Punct(".") {
            self.pos += 1;
            path.push(self.name("a name after `.`")?);
        }
        Ok(path)
    }
}
