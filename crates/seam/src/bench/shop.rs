//! A generator of realistic shop traffic: people with several devices browsing anonymously, logging in,
//! viewing products, filling carts, ordering online and buying offline in a store. The true person behind every
//! identifier is known, so stitching can be checked against it.

use serde_json::{json, Value};

/// A small, fast, deterministic generator (xorshift64*); good enough for traffic, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// A messageId as the SDKs make them, a random (version 4) UUID — here derived from the seed and the event's
/// number, so a run is repeatable and the ids of two seeds never meet.
fn message_id(seed: u64, n: u64) -> String {
    let mix = |mut z: u64| {
        // splitmix64's finaliser
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let a = mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n);
    let b = mix(a ^ n.rotate_left(32));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// One person of the generated shop and every identifier they will use.
#[derive(Debug, Clone)]
pub struct Person {
    pub user_id: Option<String>,
    /// As the person types it (mixed case); Seam stores it lower-cased.
    pub email: Option<String>,
    /// In E.164.
    pub phone: Option<String>,
    /// Anonymous ids of the person's browsers and app installs.
    pub devices: Vec<String>,
    logged_in: Vec<bool>,
}

/// A generated event and the index of the person who did it.
#[derive(Debug, Clone)]
pub struct GenEvent {
    pub person: usize,
    pub json: Value,
}

const CATEGORIES: [&str; 8] = [
    "coffee", "tea", "machines", "grinders", "cups", "filters", "syrups", "gifts",
];
const PAGES: [&str; 5] = ["Home", "Catalog", "Delivery", "Promotions", "Blog"];

/// Segments a shop like this one keeps besides Seam's three examples: with them, the 20 of
/// `seam bench ingest --segments 20` (and the others of `seam bench segments --segments 20`). Each reads what
/// the generator sends.
pub const SEGMENTS: &[(&str, &str)] = &[
    (
        "Coffee lovers",
        r#"count of "Product Viewed" where category = "coffee" in last 30 days >= 3"#,
    ),
    (
        "Big spenders",
        r#"sum revenue of "Order Completed" in last 90 days > 10000"#,
    ),
    (
        "Browses widely",
        r#"distinct category of "Product Viewed" in last 30 days >= 3"#,
    ),
    (
        "Left a cart",
        r#""Product Added" not followed by "Order Completed" within 20 minutes"#,
    ),
    (
        "Viewed, then added",
        r#""Product Viewed" then "Product Added" within 1 hour"#,
    ),
    (
        "Mostly tea",
        r#"most frequent category of "Product Viewed" in last 90 days = "tea""#,
    ),
    (
        "Evening buyers",
        r#"preferred hour of "Order Completed" >= 18"#,
    ),
    (
        "New buyers",
        r#"first time of "Order Completed" > 30 days ago"#,
    ),
    (
        "Store shoppers",
        r#"count of "Order Completed" where store is set ever >= 1"#,
    ),
    ("Reachable by phone", r#"trait phone is set"#),
    (
        "Kazan, with an e-mail",
        r#"trait city = "Kazan" and has email"#,
    ),
    (
        "Looks at expensive things",
        r#"max price of "Product Viewed" in last 30 days >= 1500"#,
    ),
    (
        "Large baskets",
        r#"avg revenue of "Order Completed" ever > 1000"#,
    ),
    (
        "Stopped browsing",
        r#"last time of "Product Viewed" < 14 days ago"#,
    ),
    (
        "Repeat buyers",
        r#"count of "Order Completed" in last 180 days >= 2"#,
    ),
    (
        "Fills carts, does not order",
        r#"count of "Product Added" in last 7 days >= 2 and count of "Order Completed" in last 7 days = 0"#,
    ),
    (
        "Machine, then grinder",
        r#""Product Viewed" where category = "machines" then "Product Viewed" where category = "grinders" within 1 day"#,
    ),
];

pub struct Shop {
    pub people: Vec<Person>,
    rng: Rng,
    seed: u64,
    now_ms: i64,
    counter: u64,
    receipts: u64,
}

impl Shop {
    /// `people` people; events start at `start_ms` and move forward a few seconds each.
    pub fn new(people: usize, seed: u64, start_ms: i64) -> Self {
        let mut rng = Rng::new(seed);
        let people = (0..people)
            .map(|i| {
                let registered = rng.chance(70);
                let devices = (0..1 + rng.below(3))
                    .map(|d| format!("anon-{seed}-{i}-{d}"))
                    .collect::<Vec<_>>();
                let n = devices.len();
                Person {
                    user_id: registered.then(|| format!("u{seed}-{i}")),
                    email: registered.then(|| {
                        if rng.chance(30) {
                            format!("Person.{i}@Example.COM")
                        } else {
                            format!("person.{i}@example.com")
                        }
                    }),
                    phone: rng
                        .chance(50)
                        .then(|| format!("+7912{:07}", i % 10_000_000)),
                    devices,
                    logged_in: vec![false; n],
                }
            })
            .collect();
        Self {
            people,
            rng,
            seed,
            now_ms: start_ms,
            counter: 0,
            receipts: 0,
        }
    }

    fn base(
        &mut self,
        person: usize,
        device: Option<usize>,
        kind: &str,
    ) -> serde_json::Map<String, Value> {
        self.counter += 1;
        self.now_ms += 1 + self.rng.below(3_000) as i64;
        let p = &self.people[person];
        let mut m = serde_json::Map::new();
        m.insert("type".into(), json!(kind));
        m.insert(
            "messageId".into(),
            json!(message_id(self.seed, self.counter)),
        );
        m.insert(
            "timestamp".into(),
            json!(seam_core::clock::format_rfc3339(self.now_ms)),
        );
        if let Some(d) = device {
            m.insert("anonymousId".into(), json!(p.devices[d]));
            if p.logged_in[d] {
                m.insert("userId".into(), json!(p.user_id));
            }
        }
        m.insert(
            "context".into(),
            json!({"library": {"name": "seam-bench", "version": "1"}, "ip": "127.0.0.1",
                   "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"}),
        );
        m
    }

    /// One visit: page views, product views, maybe a login, a cart, an order; now and then a purchase in a store.
    pub fn session(&mut self) -> Vec<GenEvent> {
        let person = self.rng.below(self.people.len());
        let mut out = Vec::new();
        if self.people[person].phone.is_some() && self.rng.chance(4) {
            return self.offline_purchase(person);
        }
        let device = self.rng.below(self.people[person].devices.len());
        for _ in 0..1 + self.rng.below(2) {
            let mut e = self.base(person, Some(device), "page");
            e.insert("name".into(), json!(PAGES[self.rng.below(PAGES.len())]));
            e.insert(
                "properties".into(),
                json!({"path": "/", "referrer": "https://search.example/"}),
            );
            out.push(GenEvent {
                person,
                json: Value::Object(e),
            });
        }
        let product = self.rng.below(5_000);
        let category = CATEGORIES[product % CATEGORIES.len()];
        let price = 100 + (product % 50) * 37;
        for _ in 0..1 + self.rng.below(4) {
            let mut e = self.base(person, Some(device), "track");
            e.insert("event".into(), json!("Product Viewed"));
            e.insert(
                "properties".into(),
                json!({"product_id": format!("sku-{product}"), "category": category, "price": price, "currency": "RUB"}),
            );
            out.push(GenEvent {
                person,
                json: Value::Object(e),
            });
        }
        let registered = self.people[person].user_id.is_some();
        if registered && !self.people[person].logged_in[device] && self.rng.chance(40) {
            self.people[person].logged_in[device] = true;
            let mut e = self.base(person, Some(device), "identify");
            let p = &self.people[person];
            let mut traits =
                json!({"email": p.email, "name": format!("Person {person}"), "city": "Kazan"});
            if let Some(phone) = &p.phone {
                traits["phone"] = json!(phone);
            }
            e.insert("traits".into(), traits);
            out.push(GenEvent {
                person,
                json: Value::Object(e),
            });
        }
        if self.rng.chance(30) {
            let mut e = self.base(person, Some(device), "track");
            e.insert("event".into(), json!("Product Added"));
            e.insert(
                "properties".into(),
                json!({"product_id": format!("sku-{product}"), "price": price, "quantity": 1}),
            );
            out.push(GenEvent {
                person,
                json: Value::Object(e),
            });
            if self.rng.chance(35) {
                let mut e = self.base(person, Some(device), "track");
                e.insert("event".into(), json!("Order Completed"));
                let order = format!("o-{}-{}", self.seed, self.counter);
                e.insert(
                    "properties".into(),
                    json!({"order_id": order, "revenue": price, "currency": "RUB",
                           "products": [{"product_id": format!("sku-{product}"), "price": price, "quantity": 1}]}),
                );
                out.push(GenEvent {
                    person,
                    json: Value::Object(e),
                });
            }
        }
        out
    }

    /// A purchase at a store's till: the cashier knows only the phone number.
    fn offline_purchase(&mut self, person: usize) -> Vec<GenEvent> {
        self.receipts += 1;
        let till = format!("pos-{}-{}", self.seed, self.receipts);
        let phone = self.people[person].phone.clone();
        let mut id = self.base(person, None, "identify");
        id.insert("anonymousId".into(), json!(till));
        id.insert("traits".into(), json!({ "phone": phone }));
        let mut order = self.base(person, None, "track");
        order.insert("anonymousId".into(), json!(till));
        order.insert("event".into(), json!("Order Completed"));
        order.insert("channel".into(), json!("pos"));
        order.insert(
            "properties".into(),
            json!({"order_id": format!("r-{}", self.receipts), "revenue": 990, "store": "Kazan-1"}),
        );
        vec![
            GenEvent {
                person,
                json: Value::Object(id),
            },
            GenEvent {
                person,
                json: Value::Object(order),
            },
        ]
    }

    /// At least `n` events (whole sessions).
    pub fn events(&mut self, n: usize) -> Vec<GenEvent> {
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            out.extend(self.session());
        }
        out
    }

    /// The current generated time.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }
}

/// Batch bodies (`{"batch": [...]}`) of exactly `total` events of `shop`, `size` to a batch, generated a chunk at
/// a time so that only what `keep` makes of each body is held (the generated values take several times the size
/// of their text).
pub fn batch_bodies<T>(
    shop: &mut Shop,
    total: usize,
    size: usize,
    keep: impl FnMut(Vec<u8>) -> T,
) -> Vec<T> {
    batch_bodies_by(shop, total, size, 100_000, keep)
}

fn batch_bodies_by<T>(
    shop: &mut Shop,
    total: usize,
    size: usize,
    chunk: usize,
    mut keep: impl FnMut(Vec<u8>) -> T,
) -> Vec<T> {
    let size = size.max(1);
    let mut bodies = Vec::with_capacity(total.div_ceil(size));
    let mut pending: Vec<GenEvent> = Vec::new();
    let mut made = 0;
    while made < total {
        let want = chunk.max(size).min(total - made);
        if pending.len() < want {
            pending.extend(shop.events(want - pending.len()));
        }
        // Whole batches only, but the last batch of the run may be short.
        let left = total - made;
        let take = if pending.len() >= left {
            left
        } else {
            pending.len() / size * size
        };
        let rest = pending.split_off(take);
        bodies.extend(batches(&pending, size).into_iter().map(&mut keep));
        made += take;
        pending = rest;
    }
    bodies
}

/// Batch bodies (`{"batch": [...]}`) of `size` events each.
pub fn batches(events: &[GenEvent], size: usize) -> Vec<Vec<u8>> {
    events
        .chunks(size.max(1))
        .map(|chunk| {
            let items: Vec<&Value> = chunk.iter().map(|e| &e.json).collect();
            serde_json::to_vec(&json!({ "batch": items })).expect("serialise")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shops_segments_parse_and_with_the_examples_make_twenty() {
        for (name, definition) in super::SEGMENTS {
            if let Err(e) = seam_audiences::parse(definition) {
                panic!("{name}: {e}");
            }
        }
        assert_eq!(seam_audiences::EXAMPLES.len() + super::SEGMENTS.len(), 20);
    }

    #[test]
    fn bodies_made_a_chunk_at_a_time_are_those_of_the_whole_run() {
        let mut whole = super::Shop::new(50, 3, 0);
        let mut events = whole.events(5_123);
        events.truncate(5_123);
        let expected = super::batches(&events, 100);
        for chunk in [1, 99, 1_000, 10_000] {
            let mut shop = super::Shop::new(50, 3, 0);
            let bodies = super::batch_bodies_by(&mut shop, 5_123, 100, chunk, |b| b);
            assert_eq!(bodies.len(), 52, "chunk {chunk}");
            assert!(bodies == expected, "chunk {chunk}");
        }
    }
}
