//! Identity stitching as a pure function.
//!
//! [`resolve`] takes the identifiers an event carries, the workspace's [`IdentifierRules`] and a read-only
//! [`IdentityView`] of the current identity graph, and returns a [`Resolution`]: the profile the event belongs to,
//! the identifiers to attach to it, the profiles to merge into it and the conflicts that stopped a merge.
//! Applying the resolution is the caller's job (the store in production, [`MemoryGraph`] in tests).
//!
//! The rules:
//! - the event's highest-priority identifier decides whose event it is;
//! - every other identifier it carries joins that person: an unknown one is attached, one owned by another
//!   profile merges that profile in — unless the merged profile would then hold more distinct values of a type
//!   than the type's limit (two different `user_id`s, say), in which case nothing is merged and the conflict is
//!   recorded;
//! - of the profiles merged together, the oldest survives, so a profile's id is stable for as long as it lives.
//!
//! Because merges follow co-occurrence transitively, the final grouping of identifiers into profiles does not
//! depend on the order the calls arrive in (as long as no limit is hit); `tests` checks this by property.

use std::collections::{BTreeMap, BTreeSet};

use seam_core::{Identifier, IdentifierRules, IdentifierType, ProfileId};
use serde::Serialize;

mod memory;

pub use memory::MemoryGraph;

/// Read access to the identity graph as it stands before the event.
pub trait IdentityView {
    type Error;
    /// The profile that holds this identifier, if any.
    fn owner(&mut self, id: &Identifier) -> Result<Option<ProfileId>, Self::Error>;
    /// All identifiers a profile holds.
    fn identities(&mut self, profile: &ProfileId) -> Result<Vec<Identifier>, Self::Error>;
}

/// What an event does to the identity graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The profile the event belongs to (after the merges below).
    pub profile: ProfileId,
    /// True when `profile` is new, created by this event.
    pub created: bool,
    /// Identifiers to attach to `profile`.
    pub attach: Vec<Identifier>,
    /// Profiles to merge into `profile`, oldest first.
    pub merge: Vec<ProfileId>,
    /// Identifiers of the event that were left where they were, and why.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub identifier: Identifier,
    /// The profile that holds the identifier, when joining it would have meant a merge.
    pub held_by: Option<ProfileId>,
    /// The type whose limit would have been exceeded.
    pub limit_type: IdentifierType,
    pub limit: u32,
}

/// Why an event cannot be placed on any profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError<E> {
    /// None of the event's identifiers is of a type the workspace uses for identity.
    NoIdentifier,
    View(E),
}

/// The identifier an alias call's `previousId` stands for: an existing `user_id`, else an `anonymous_id`.
pub fn alias_previous<V: IdentityView>(
    view: &mut V,
    previous_id: &str,
) -> Result<Identifier, V::Error> {
    let as_user = Identifier::new(
        IdentifierType::builtin(IdentifierType::USER_ID),
        previous_id,
    );
    if view.owner(&as_user)?.is_some() {
        return Ok(as_user);
    }
    Ok(Identifier::new(
        IdentifierType::builtin(IdentifierType::ANONYMOUS_ID),
        previous_id,
    ))
}

/// Decides where an event with these identifiers belongs. `new_profile` is the id to use if a profile must be
/// created (derived from the event's log position by the caller).
pub fn resolve<V: IdentityView>(
    rules: &IdentifierRules,
    view: &mut V,
    identifiers: &[Identifier],
    new_profile: ProfileId,
) -> Result<Resolution, ResolveError<V::Error>> {
    // Known types only, highest priority first, each identifier once; ties broken by value for determinism.
    let mut ids: Vec<(i32, &Identifier)> = identifiers
        .iter()
        .filter_map(|id| rules.rule(&id.kind).map(|r| (r.priority, id)))
        .collect();
    ids.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ids.dedup_by(|a, b| a.1 == b.1);
    if ids.is_empty() {
        return Err(ResolveError::NoIdentifier);
    }

    // The group of profiles that will be one, and what they hold together.
    let mut group: Vec<ProfileId> = Vec::new();
    let mut held: BTreeMap<IdentifierType, Vec<String>> = BTreeMap::new();
    let mut attach: Vec<Identifier> = Vec::new();
    let mut conflicts = Vec::new();

    // The first profile found joins the group without reading its identifiers; they are read only when a later
    // identifier needs a limit check, so the common event (every identifier already on one profile) reads none.
    let mut unread: Option<ProfileId> = None;

    for (_, id) in ids {
        match view.owner(id).map_err(ResolveError::View)? {
            Some(owner) if group.contains(&owner) => {}
            Some(owner) if group.is_empty() && held.is_empty() => {
                group.push(owner.clone());
                unread = Some(owner);
            }
            Some(owner) => {
                read_unread(view, &mut unread, &mut held).map_err(ResolveError::View)?;
                let theirs = view.identities(&owner).map_err(ResolveError::View)?;
                match exceeded(rules, &held, &theirs) {
                    None => {
                        for t in theirs {
                            add_value(&mut held, t);
                        }
                        group.push(owner);
                    }
                    Some((limit_type, limit)) => conflicts.push(Conflict {
                        identifier: id.clone(),
                        held_by: Some(owner),
                        limit_type,
                        limit,
                    }),
                }
            }
            None => {
                read_unread(view, &mut unread, &mut held).map_err(ResolveError::View)?;
                match exceeded(rules, &held, std::slice::from_ref(id)) {
                    None => {
                        add_value(&mut held, id.clone());
                        attach.push(id.clone());
                    }
                    Some((limit_type, limit)) => conflicts.push(Conflict {
                        identifier: id.clone(),
                        held_by: None,
                        limit_type,
                        limit,
                    }),
                }
            }
        }
    }

    group.sort_by_key(ProfileId::created_seq);
    let (profile, created, merge) = if group.is_empty() {
        (new_profile, true, Vec::new())
    } else {
        let survivor = group.remove(0);
        (survivor, false, group)
    };
    Ok(Resolution {
        profile,
        created,
        attach,
        merge,
        conflicts,
    })
}

/// Adds the identifiers of the group's first profile to `held`, if they were not read yet.
fn read_unread<V: IdentityView>(
    view: &mut V,
    unread: &mut Option<ProfileId>,
    held: &mut BTreeMap<IdentifierType, Vec<String>>,
) -> Result<(), V::Error> {
    if let Some(p) = unread.take() {
        for t in view.identities(&p)? {
            add_value(held, t);
        }
    }
    Ok(())
}

fn add_value(held: &mut BTreeMap<IdentifierType, Vec<String>>, id: Identifier) {
    let values = held.entry(id.kind).or_default();
    if !values.contains(&id.value) {
        values.push(id.value);
    }
}

/// The first type whose limit `more` would push the group past, if any.
fn exceeded(
    rules: &IdentifierRules,
    held: &BTreeMap<IdentifierType, Vec<String>>,
    more: &[Identifier],
) -> Option<(IdentifierType, u32)> {
    let mut extra: BTreeMap<&IdentifierType, Vec<&str>> = BTreeMap::new();
    for id in more {
        let already = held.get(&id.kind).is_some_and(|v| v.contains(&id.value));
        let values = extra.entry(&id.kind).or_default();
        if !already && !values.contains(&id.value.as_str()) {
            values.push(&id.value);
        }
    }
    extra.into_iter().find_map(|(kind, values)| {
        let limit = rules.rule(kind).map_or(u32::MAX, |r| r.limit);
        let total = held.get(kind).map_or(0, Vec::len) + values.len();
        (total > limit as usize).then(|| (kind.clone(), limit))
    })
}

/// The grouping stitching must produce when no limit is hit: identifiers that appeared in one call together
/// belong to one person, transitively (a union-find over co-occurrence). The property tests and the end-to-end
/// pipeline test check `resolve` against it.
pub fn co_occurrence_groups<T: Ord + Clone>(calls: &[Vec<T>]) -> BTreeSet<BTreeSet<T>> {
    fn find<T: Ord + Clone>(parent: &mut BTreeMap<T, T>, x: &T) -> T {
        let up = parent.get(x).cloned().unwrap_or_else(|| x.clone());
        if &up == x {
            return up;
        }
        let root = find(parent, &up);
        parent.insert(x.clone(), root.clone());
        root
    }
    let mut parent: BTreeMap<T, T> = BTreeMap::new();
    for call in calls {
        for x in call {
            parent.entry(x.clone()).or_insert_with(|| x.clone());
        }
        for pair in call.windows(2) {
            let (a, b) = (find(&mut parent, &pair[0]), find(&mut parent, &pair[1]));
            if a != b {
                parent.insert(a, b);
            }
        }
    }
    let keys: Vec<T> = parent.keys().cloned().collect();
    let mut groups: BTreeMap<T, BTreeSet<T>> = BTreeMap::new();
    for k in keys {
        let root = find(&mut parent, &k);
        groups.entry(root).or_default().insert(k);
    }
    groups.into_values().collect()
}

#[cfg(test)]
mod tests;
