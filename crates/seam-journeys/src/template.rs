//! Message templates: Liquid, one template with a variant per channel (an e-mail subject and body, an SMS
//! text, a push title and body, a messenger text).
//!
//! A template is checked when it is saved: every part must parse, and must render against a sample person
//! and event — so a typo in a variable's root (`{{ profle.first_name }}`) or a broken filter is refused then,
//! not when a message goes out. Below the roots (`profile`, `event`, `message`) a missing value is empty, as
//! shops expect from Liquid (`{{ profile.traits.first_name | default: "friend" }}`). One limit: the items a
//! `for` loop walks are the Liquid engine's own values, in which a missing field is an error at send time.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use liquid::model::{
    ArrayView, DisplayCow, KString, KStringCow, ObjectView, ScalarCow, State, Value as LValue,
    ValueView,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::channel::Channel;
use crate::definition::Problem;

/// A template as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub variants: BTreeMap<Channel, VariantSpec>,
}

/// The parts of one channel's variant; which are required depends on the channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// The parts each channel's variant has.
pub fn parts_of(channel: Channel) -> &'static [&'static str] {
    match channel {
        Channel::Email => &["subject", "body"],
        Channel::WebPush | Channel::MobilePush => &["title", "body"],
        Channel::Sms | Channel::Telegram | Channel::Viber | Channel::Whatsapp => &["text"],
        Channel::Webhook => &["body"],
    }
}

/// A checked template.
pub struct Template {
    pub id: String,
    pub version: u32,
    pub spec: TemplateSpec,
    variants: BTreeMap<Channel, Vec<(&'static str, liquid::Template)>>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// A rendered message: part name → text.
pub type Rendered = BTreeMap<&'static str, String>;

fn parser() -> &'static liquid::Parser {
    static PARSER: OnceLock<liquid::Parser> = OnceLock::new();
    PARSER.get_or_init(|| {
        liquid::ParserBuilder::with_stdlib()
            .build()
            .expect("the standard Liquid library builds")
    })
}

/// The context a template is rendered with: `profile` (id, traits, computed traits), `event` (the run's
/// trigger: name, properties) and `message` (channel, journey).
pub fn context(profile: Value, event: Value, message: Value) -> Value {
    // Moved in: `json!` would copy each value through its serialiser.
    let parts = [("profile", profile), ("event", event), ("message", message)];
    Value::Object(parts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn sample_context(channel: Channel) -> Value {
    context(
        json!({"id": "prof_sample", "traits": {}, "computed": {}}),
        json!({"name": "Sample", "properties": {}}),
        json!({"channel": channel.as_str(), "journey": "sample"}),
    )
}

impl Template {
    /// Checks `spec`: each variant has its channel's parts, nothing else, and every part parses and renders.
    pub fn check(spec: TemplateSpec, version: u32) -> Result<Template, Vec<Problem>> {
        let mut problems = vec![];
        let mut problem = |field: String, reason: String| problems.push(Problem { field, reason });
        if spec.id.is_empty() || spec.id.len() > 100 {
            problem("id".into(), "an id is 1–100 characters".into());
        }
        if spec.variants.is_empty() {
            problem(
                "variants".into(),
                "a template needs a variant for at least one channel".into(),
            );
        }
        let mut variants = BTreeMap::new();
        for (channel, v) in &spec.variants {
            let given = [
                ("subject", &v.subject),
                ("title", &v.title),
                ("body", &v.body),
                ("text", &v.text),
            ];
            let mut parts = vec![];
            for (name, text) in given {
                let field = format!("variants.{channel}.{name}");
                let wanted = parts_of(*channel).contains(&name);
                match (text, wanted) {
                    (None, true) => problem(field, format!("a {channel} variant needs a {name}")),
                    (Some(_), false) => problem(
                        field,
                        format!(
                            "a {channel} variant has {}",
                            parts_of(*channel).join(" and ")
                        ),
                    ),
                    (Some(text), true) => match parser().parse(text) {
                        Ok(t) => match t.render(&Lv::root(&sample_context(*channel))) {
                            Ok(_) => parts.push((name, t)),
                            Err(e) => problem(field, liquid_error(&e)),
                        },
                        Err(e) => problem(field, liquid_error(&e)),
                    },
                    (None, false) => {}
                }
            }
            variants.insert(*channel, parts);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Template {
            id: spec.id.clone(),
            version,
            spec,
            variants,
        })
    }

    pub fn has_variant(&self, channel: Channel) -> bool {
        self.variants.contains_key(&channel)
    }

    /// Renders the channel's variant with `ctx` (see [`context`]).
    pub fn render(&self, channel: Channel, ctx: &Value) -> Result<Rendered, String> {
        let parts = self
            .variants
            .get(&channel)
            .ok_or_else(|| format!("template `{}` has no {channel} variant", self.id))?;
        let root = Lv::root(ctx);
        parts
            .iter()
            .map(|(name, t)| Ok((*name, t.render(&root).map_err(|e| liquid_error(&e))?)))
            .collect()
    }
}

fn liquid_error(e: &liquid::Error) -> String {
    e.to_string().trim().replace('\n', "; ")
}

/// A render context in which a missing value below the roots is nil rather than an error.
#[derive(Debug)]
enum Lv {
    Plain(LValue),
    Array(Vec<Lv>),
    Object {
        fields: BTreeMap<String, Lv>,
        strict: bool,
    },
}

static NIL: Lv = Lv::Plain(LValue::Nil);

impl Lv {
    fn root(v: &Value) -> Lv {
        match Lv::from_json(v) {
            Lv::Object { fields, .. } => Lv::Object {
                fields,
                strict: true,
            },
            other => other,
        }
    }

    fn from_json(v: &Value) -> Lv {
        match v {
            Value::Null => Lv::Plain(LValue::Nil),
            Value::Bool(b) => Lv::Plain(LValue::scalar(*b)),
            Value::Number(n) => Lv::Plain(match n.as_i64() {
                Some(i) => LValue::scalar(i),
                None => LValue::scalar(n.as_f64().unwrap_or(0.0)),
            }),
            Value::String(s) => Lv::Plain(LValue::scalar(s.clone())),
            Value::Array(a) => Lv::Array(a.iter().map(Lv::from_json).collect()),
            Value::Object(o) => Lv::Object {
                fields: o
                    .iter()
                    .map(|(k, v)| (k.clone(), Lv::from_json(v)))
                    .collect(),
                strict: false,
            },
        }
    }

    fn is_empty_container(&self) -> bool {
        match self {
            Lv::Array(a) => a.is_empty(),
            Lv::Object { fields, .. } => fields.is_empty(),
            Lv::Plain(_) => false,
        }
    }
}

impl ValueView for Lv {
    fn as_debug(&self) -> &dyn fmt::Debug {
        self
    }

    fn render(&self) -> DisplayCow<'_> {
        match self {
            Lv::Plain(v) => v.render(),
            Lv::Array(a) => DisplayCow::Owned(Box::new(
                a.iter().map(|x| x.render().to_string()).collect::<String>(),
            )),
            Lv::Object { .. } => DisplayCow::Owned(Box::new(String::new())),
        }
    }

    fn source(&self) -> DisplayCow<'_> {
        match self {
            Lv::Plain(v) => v.source(),
            _ => self.to_value().source().to_string().into_display(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Lv::Plain(v) => v.type_name(),
            Lv::Array(_) => "array",
            Lv::Object { .. } => "object",
        }
    }

    fn query_state(&self, state: State) -> bool {
        match self {
            Lv::Plain(v) => v.query_state(state),
            _ => match state {
                State::Truthy => true,
                State::DefaultValue | State::Empty | State::Blank => self.is_empty_container(),
            },
        }
    }

    fn to_kstr(&self) -> KStringCow<'_> {
        match self {
            Lv::Plain(v) => v.to_kstr(),
            _ => KStringCow::from_string(self.render().to_string()),
        }
    }

    fn to_value(&self) -> LValue {
        match self {
            Lv::Plain(v) => v.clone(),
            Lv::Array(a) => LValue::Array(a.iter().map(ValueView::to_value).collect()),
            Lv::Object { fields, .. } => LValue::Object(
                fields
                    .iter()
                    .map(|(k, v)| (KString::from_ref(k), v.to_value()))
                    .collect(),
            ),
        }
    }

    fn as_scalar(&self) -> Option<ScalarCow<'_>> {
        match self {
            Lv::Plain(v) => v.as_scalar(),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&dyn ArrayView> {
        match self {
            Lv::Array(_) => Some(self),
            _ => None,
        }
    }

    fn as_object(&self) -> Option<&dyn ObjectView> {
        match self {
            // Nil answers every index with nil, so `a.b.c` is empty when `a` has no `b`.
            Lv::Object { .. } => Some(self),
            Lv::Plain(v) if v.is_nil() => Some(self),
            _ => None,
        }
    }

    fn is_nil(&self) -> bool {
        matches!(self, Lv::Plain(v) if v.is_nil())
    }
}

trait IntoDisplay {
    fn into_display(self) -> DisplayCow<'static>;
}

impl IntoDisplay for String {
    fn into_display(self) -> DisplayCow<'static> {
        DisplayCow::Owned(Box::new(self))
    }
}

impl ArrayView for Lv {
    fn as_value(&self) -> &dyn ValueView {
        self
    }

    fn size(&self) -> i64 {
        match self {
            Lv::Array(a) => a.len() as i64,
            _ => 0,
        }
    }

    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Lv::Array(a) => Box::new(a.iter().map(|x| x as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn contains_key(&self, index: i64) -> bool {
        ArrayView::get(self, index).is_some()
    }

    fn get(&self, index: i64) -> Option<&dyn ValueView> {
        let Lv::Array(a) = self else { return None };
        let i = if index < 0 {
            a.len() as i64 + index
        } else {
            index
        };
        usize::try_from(i)
            .ok()
            .and_then(|i| <[Lv]>::get(a, i))
            .map(|x| x as &dyn ValueView)
    }
}

impl ObjectView for Lv {
    fn as_value(&self) -> &dyn ValueView {
        self
    }

    fn size(&self) -> i64 {
        match self {
            Lv::Object { fields, .. } => fields.len() as i64,
            _ => 0,
        }
    }

    fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
        match self {
            Lv::Object { fields, .. } => Box::new(fields.keys().map(|k| KStringCow::from_ref(k))),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
        match self {
            Lv::Object { fields, .. } => Box::new(fields.values().map(|x| x as &dyn ValueView)),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn iter<'k>(&'k self) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
        match self {
            Lv::Object { fields, .. } => Box::new(
                fields
                    .iter()
                    .map(|(k, v)| (KStringCow::from_ref(k), v as &dyn ValueView)),
            ),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn contains_key(&self, index: &str) -> bool {
        ObjectView::get(self, index).is_some()
    }

    fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
        match self {
            Lv::Object { fields, strict } => match fields.get(index) {
                Some(v) => Some(v),
                None if *strict => None,
                None => Some(&NIL),
            },
            Lv::Plain(v) if v.is_nil() => Some(&NIL),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(channel: Channel, v: VariantSpec) -> TemplateSpec {
        TemplateSpec {
            id: "cart".into(),
            name: String::new(),
            variants: [(channel, v)].into(),
        }
    }

    #[test]
    fn a_template_renders_profile_event_and_missing_values_with_defaults() {
        let t = Template::check(
            spec(
                Channel::Email,
                VariantSpec {
                    subject: Some("{{ profile.traits.first_name | default: \"Friend\" }}, your cart".into()),
                    body: Some(
                        "{% for p in event.properties.products %}{{ p.name }} ({{ p.colour }}); {% endfor %}{{ profile.traits.missing.deeper }}".into(),
                    ),
                    ..VariantSpec::default()
                },
            ),
            1,
        )
        .unwrap();
        let ctx = context(
            json!({"id": "prof_1", "traits": {"first_name": "Anna"}}),
            json!({"name": "Product Added", "properties": {"products": [{"name": "Coffee", "colour": "black"}, {"name": "Mug", "colour": "red"}]}}),
            json!({"channel": "email"}),
        );
        let r = t.render(Channel::Email, &ctx).unwrap();
        assert_eq!(r["subject"], "Anna, your cart");
        assert_eq!(r["body"], "Coffee (black); Mug (red); ");
        let r = t
            .render(
                Channel::Email,
                &context(json!({"traits": {}}), json!({}), json!({})),
            )
            .unwrap();
        assert_eq!(r["subject"], "Friend, your cart");
        assert!(t
            .render(Channel::Sms, &ctx)
            .unwrap_err()
            .contains("no sms variant"));
    }

    #[test]
    fn broken_templates_are_refused_when_saved_with_the_part_named() {
        let cases = [
            (
                Channel::Sms,
                VariantSpec {
                    text: Some("Hi {{ profile.traits.name".into()),
                    ..Default::default()
                },
                "variants.sms.text",
            ),
            (
                Channel::Sms,
                VariantSpec {
                    text: Some("Hi {{ profle.traits.name }}".into()),
                    ..Default::default()
                },
                "variants.sms.text",
            ),
            (
                Channel::Sms,
                VariantSpec {
                    text: Some("{{ 1 | no_such_filter }}".into()),
                    ..Default::default()
                },
                "variants.sms.text",
            ),
            (
                Channel::Email,
                VariantSpec {
                    body: Some("x".into()),
                    ..Default::default()
                },
                "variants.email.subject",
            ),
            (
                Channel::Sms,
                VariantSpec {
                    text: Some("x".into()),
                    title: Some("t".into()),
                    ..Default::default()
                },
                "variants.sms.title",
            ),
        ];
        for (channel, v, field) in cases {
            let problems = Template::check(spec(channel, v.clone()), 1).unwrap_err();
            assert_eq!(problems[0].field, field, "{v:?}: {problems:?}");
            assert!(!problems[0].reason.is_empty());
        }
    }
}
