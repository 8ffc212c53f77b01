//! Applying the log to the projections: identity, profile state and timeline, one event at a time, in log order.
//!
//! The same [`Processor`] runs live (in the writer, in the transaction that appends) and in `seam rebuild`, so a
//! rebuilt projection is the live one by construction. Seam's own events (merges, conflicts) are written with
//! message ids derived from the event that caused them: replaying the log finds them already there and reuses them.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::{
    Event, EventKind, EventType, Identifier, IdentifierRules, IdentifierType, ProfileId, Seq,
};
use seam_identity::{alias_previous, resolve, IdentityView, Resolution, ResolveError};
use seam_profiles::ProfileState;
use serde_json::{json, Map};

use crate::StoreError;

/// Entries kept in each cache before it is emptied (the caches only save reads; the database is the truth).
const CACHE_LIMIT: usize = 1_000_000;

pub(crate) struct Processor {
    rules: HashMap<i64, IdentifierRules>,
    /// Profile states read or written recently; written back for those in `dirty` by `flush`.
    states: HashMap<(i64, ProfileId), ProfileState>,
    dirty: HashSet<(i64, ProfileId)>,
    /// Who holds an identifier (`None`: nobody), per workspace. Only this processor changes identities, so the
    /// cache stays exact; it is dropped whenever a transaction rolls back.
    owners: HashMap<i64, HashMap<Identifier, Option<ProfileId>>>,
}

struct SqlView<'c> {
    conn: &'c Connection,
    ws: i64,
    owners: &'c mut HashMap<Identifier, Option<ProfileId>>,
}

impl IdentityView for SqlView<'_> {
    type Error = rusqlite::Error;

    fn owner(&mut self, id: &Identifier) -> rusqlite::Result<Option<ProfileId>> {
        if let Some(known) = self.owners.get(id) {
            return Ok(known.clone());
        }
        let found = self
            .conn
            .prepare_cached(
                "SELECT profile_id FROM identities WHERE ws = ?1 AND type = ?2 AND value = ?3",
            )?
            .query_row(params![self.ws, id.kind.as_str(), id.value], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .map(|s| ProfileId::parse(&s).map_err(|e| corrupt(e.0)))
            .transpose()?;
        self.owners.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn identities(&mut self, profile: &ProfileId) -> rusqlite::Result<Vec<Identifier>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT type, value FROM identities WHERE ws = ?1 AND profile_id = ?2",
        )?;
        let rows = stmt.query_map(params![self.ws, profile.as_str()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        rows.map(|row| {
            let (t, v) = row?;
            Ok(Identifier::new(
                IdentifierType::parse(&t).map_err(corrupt)?,
                v,
            ))
        })
        .collect()
    }
}

fn corrupt(msg: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(msg.into().into())
}

impl Processor {
    pub(crate) fn new(rules: HashMap<i64, IdentifierRules>) -> Self {
        Self {
            rules,
            states: HashMap::new(),
            dirty: HashSet::new(),
            owners: HashMap::new(),
        }
    }

    pub(crate) fn set_rules(&mut self, ws: i64, rules: IdentifierRules) {
        self.rules.insert(ws, rules);
    }

    /// Applies one event of the log. System events are skipped: they are outputs of this function.
    pub(crate) fn apply(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        event: &Event,
    ) -> Result<(), StoreError> {
        if event.kind.kind() == EventKind::System {
            return Ok(());
        }
        let rules = self.rules.entry(ws).or_default().clone();
        let mut view = SqlView { conn, ws, owners: self.owners.entry(ws).or_default() };
        let mut ids = event.identifiers.clone();
        if event.kind == EventType::Alias {
            if let Some(prev) = &event.previous_id {
                ids.push(alias_previous(&mut view, prev)?);
            }
        }
        let r = match resolve(&rules, &mut view, &ids, ProfileId::from_seq(seq)) {
            Ok(r) => r,
            Err(ResolveError::NoIdentifier) => {
                tracing::warn!(seq, "event has no identifier of a type this workspace uses; not placed on a profile");
                return Ok(());
            }
            Err(ResolveError::View(e)) => return Err(e.into()),
        };
        self.apply_resolution(conn, seq, ws, event, &r)?;

        self.state(conn, ws, &r.profile)?.apply(event, seq);
        conn.prepare_cached(
            "INSERT OR IGNORE INTO timeline (ws, profile_id, ts, seq) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![ws, r.profile.as_str(), event.timestamp, seq])?;
        Ok(())
    }

    fn apply_resolution(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        event: &Event,
        r: &Resolution,
    ) -> Result<(), StoreError> {
        let survivor = r.profile.as_str();
        if r.created {
            conn.prepare_cached(
                "INSERT INTO profiles (ws, id, merged_into, state) VALUES (?1, ?2, NULL, NULL)",
            )?
            .execute(params![ws, survivor])?;
            self.states.insert((ws, r.profile.clone()), ProfileState::default());
            self.dirty.insert((ws, r.profile.clone()));
        }
        for loser in &r.merge {
            let theirs = std::mem::take(self.state(conn, ws, loser)?);
            self.states.remove(&(ws, loser.clone()));
            self.dirty.remove(&(ws, loser.clone()));
            self.state(conn, ws, &r.profile)?.absorb(theirs);
            let owners = self.owners.entry(ws).or_default();
            let mut stmt = conn.prepare_cached("SELECT type, value FROM identities WHERE ws = ?1 AND profile_id = ?2")?;
            let moved = stmt.query_map(params![ws, loser.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in moved {
                let (t, v) = row?;
                let kind = IdentifierType::parse(&t).map_err(StoreError::Corrupt)?;
                owners.insert(Identifier::new(kind, v), Some(r.profile.clone()));
            }
            conn.prepare_cached(
                "UPDATE identities SET profile_id = ?3 WHERE ws = ?1 AND profile_id = ?2",
            )?
            .execute(params![ws, loser.as_str(), survivor])?;
            conn.prepare_cached(
                "UPDATE timeline SET profile_id = ?3 WHERE ws = ?1 AND profile_id = ?2",
            )?
            .execute(params![ws, loser.as_str(), survivor])?;
            conn.prepare_cached(
                "UPDATE profiles SET merged_into = ?3, state = NULL WHERE ws = ?1 AND id = ?2",
            )?
            .execute(params![ws, loser.as_str(), survivor])?;
            conn.prepare_cached(
                "UPDATE profiles SET merged_into = ?3 WHERE ws = ?1 AND merged_into = ?2",
            )?
            .execute(params![ws, loser.as_str(), survivor])?;
            let props = json!({"merged_profile_id": loser, "into_profile_id": survivor, "caused_by": event.message_id});
            self.system_event(
                conn,
                ws,
                seq,
                survivor,
                event,
                EventType::Merge,
                loser.as_str(),
                props,
            )?;
        }
        let owners = self.owners.entry(ws).or_default();
        for id in &r.attach {
            conn.prepare_cached(
                "INSERT INTO identities (ws, type, value, profile_id) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![ws, id.kind.as_str(), id.value, survivor])?;
            owners.insert(id.clone(), Some(r.profile.clone()));
        }
        if !r.conflicts.is_empty() {
            for c in &r.conflicts {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO identity_conflicts
                     (seq, ws, type, value, profile_id, held_by, limit_type, max_per_profile)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    seq,
                    ws,
                    c.identifier.kind.as_str(),
                    c.identifier.value,
                    survivor,
                    c.held_by.as_ref().map(ProfileId::as_str),
                    c.limit_type.as_str(),
                    c.limit
                ])?;
            }
            let props = json!({"conflicts": r.conflicts, "caused_by": event.message_id});
            self.system_event(
                conn,
                ws,
                seq,
                survivor,
                event,
                EventType::IdentityConflict,
                "",
                props,
            )?;
        }
        Ok(())
    }

    /// Writes (or, in a replay, finds) a system event caused by the event at `cause` and puts it on `profile`'s
    /// timeline.
    #[allow(clippy::too_many_arguments)]
    fn system_event(
        &mut self,
        conn: &Connection,
        ws: i64,
        cause: Seq,
        profile: &str,
        caused_by: &Event,
        kind: EventType,
        key: &str,
        properties: serde_json::Value,
    ) -> Result<(), StoreError> {
        let message_id = format!("$seam:{}:{cause}:{key}", kind.as_str());
        let props: Map<String, serde_json::Value> =
            properties.as_object().cloned().unwrap_or_default();
        let ev = Event::system(message_id.clone(), kind, caused_by.timestamp, props);
        let body = serde_json::to_string(&ev)?;
        let inserted: Option<Seq> = conn
            .prepare_cached(
                "INSERT INTO events (ws, message_id, type, name, ts, received_at, body)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6) ON CONFLICT DO NOTHING RETURNING seq",
            )?
            .query_row(
                params![
                    ws,
                    message_id,
                    kind.as_str(),
                    ev.timestamp,
                    caused_by.received_at,
                    body
                ],
                |r| r.get(0),
            )
            .optional()?;
        let seq = match inserted {
            Some(s) => s,
            None => conn
                .prepare_cached("SELECT seq FROM events WHERE ws = ?1 AND message_id = ?2")?
                .query_row(params![ws, message_id], |r| r.get(0))?,
        };
        conn.prepare_cached(
            "INSERT OR IGNORE INTO timeline (ws, profile_id, ts, seq) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![ws, profile, ev.timestamp, seq])?;
        Ok(())
    }

    /// The state of a live profile, loaded into the cache of touched profiles.
    fn state(
        &mut self,
        conn: &Connection,
        ws: i64,
        p: &ProfileId,
    ) -> Result<&mut ProfileState, StoreError> {
        let key = (ws, p.clone());
        if !self.states.contains_key(&key) {
            let loaded = Self::load(conn, ws, p)?;
            self.states.insert(key.clone(), loaded);
        }
        self.dirty.insert(key.clone());
        Ok(self.states.get_mut(&key).expect("just inserted"))
    }

    fn load(conn: &Connection, ws: i64, p: &ProfileId) -> Result<ProfileState, StoreError> {
        let raw: Option<Option<String>> = conn
            .prepare_cached("SELECT state FROM profiles WHERE ws = ?1 AND id = ?2")?
            .query_row(params![ws, p.as_str()], |r| r.get(0))
            .optional()?;
        match raw {
            Some(Some(json)) => Ok(serde_json::from_str(&json)?),
            Some(None) => Ok(ProfileState::default()),
            None => Err(StoreError::Corrupt(format!(
                "profile {p} is referenced but missing"
            ))),
        }
    }

    /// Writes every touched profile state. Call before committing.
    pub(crate) fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let mut stmt =
            conn.prepare_cached("UPDATE profiles SET state = ?3 WHERE ws = ?1 AND id = ?2")?;
        for key in self.dirty.drain() {
            let state = self.states.get(&key).expect("a dirty state is cached");
            stmt.execute(params![key.0, key.1.as_str(), serde_json::to_string(state)?])?;
        }
        if self.states.len() > CACHE_LIMIT {
            self.states.clear();
        }
        if self.owners.values().map(HashMap::len).sum::<usize>() > CACHE_LIMIT {
            self.owners.clear();
        }
        Ok(())
    }

    /// Forgets unflushed work (after a rolled-back transaction).
    pub(crate) fn discard(&mut self) {
        self.dirty.clear();
        self.states.clear();
        self.owners.clear();
    }
}
