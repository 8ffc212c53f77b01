//! An in-memory identity graph: the reference the store's graph is checked against, and the one simulations use.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;

use seam_core::{Identifier, ProfileId};

use crate::{Conflict, IdentityView, Resolution};

#[derive(Debug, Default, Clone)]
pub struct MemoryGraph {
    owner: BTreeMap<Identifier, ProfileId>,
    held: BTreeMap<ProfileId, BTreeSet<Identifier>>,
    merged_into: BTreeMap<ProfileId, ProfileId>,
    conflicts: Vec<Conflict>,
}

impl MemoryGraph {
    /// Applies a resolution produced against this graph.
    pub fn apply(&mut self, r: &Resolution) {
        let survivor = r.profile.clone();
        self.held.entry(survivor.clone()).or_default();
        for loser in &r.merge {
            for id in self.held.remove(loser).unwrap_or_default() {
                self.owner.insert(id.clone(), survivor.clone());
                self.held.get_mut(&survivor).expect("survivor").insert(id);
            }
            for target in self.merged_into.values_mut() {
                if target == loser {
                    *target = survivor.clone();
                }
            }
            self.merged_into.insert(loser.clone(), survivor.clone());
        }
        for id in &r.attach {
            self.owner.insert(id.clone(), survivor.clone());
            self.held
                .get_mut(&survivor)
                .expect("survivor")
                .insert(id.clone());
        }
        self.conflicts.extend(r.conflicts.iter().cloned());
    }

    /// Every conflict recorded so far, in order.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// Live profiles with what each holds.
    pub fn profiles(&self) -> &BTreeMap<ProfileId, BTreeSet<Identifier>> {
        &self.held
    }

    /// The live profile an id stands for, following merges.
    pub fn current(&self, p: &ProfileId) -> ProfileId {
        self.merged_into
            .get(p)
            .cloned()
            .unwrap_or_else(|| p.clone())
    }

    pub fn owner_of(&self, id: &Identifier) -> Option<&ProfileId> {
        self.owner.get(id)
    }
}

impl IdentityView for MemoryGraph {
    type Error = Infallible;
    fn owner(&mut self, id: &Identifier) -> Result<Option<ProfileId>, Infallible> {
        Ok(self.owner.get(id).cloned())
    }
    fn identities(&mut self, profile: &ProfileId) -> Result<Vec<Identifier>, Infallible> {
        Ok(self
            .held
            .get(profile)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }
}
