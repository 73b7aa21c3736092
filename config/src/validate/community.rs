//! Community aliases and how a BGPAdvertisement's communities resolve against them.

use std::collections::BTreeMap;

use super::{Problem, object_ref};
use crate::addr::{self, Community};
use crate::model::Community as CommunityObject;
use crate::state::{Kind, ObjectRef};

/// Collects Community aliases; a bad or duplicate alias is reported and left out.
pub fn valid_communities<'a>(
    communities: impl IntoIterator<Item = &'a CommunityObject>,
) -> (BTreeMap<String, Community>, Vec<Problem>) {
    communities_with_refs(
        communities
            .into_iter()
            .map(|c| (object_ref(Kind::Community, &c.metadata), c))
            .collect(),
    )
}

pub(super) fn communities_with_refs(
    mut objects: Vec<(ObjectRef, &CommunityObject)>,
) -> (BTreeMap<String, Community>, Vec<Problem>) {
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    let mut aliases: BTreeMap<String, Community> = BTreeMap::new();
    let mut defined_at: BTreeMap<String, (ObjectRef, usize)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (object, c) in objects {
        for (i, alias) in c.spec.communities.iter().enumerate() {
            if let Some((other, j)) = defined_at.get(&alias.name) {
                let where_ = if *other == object {
                    format!("spec.communities[{j}] of this object")
                } else {
                    format!("{other} spec.communities[{j}]")
                };
                problems.push(Problem::error(
                    &object,
                    format!("spec.communities[{i}].name"),
                    format!("alias {:?} is already defined in {where_}", alias.name),
                ));
                continue;
            }
            match alias.value.parse::<Community>() {
                Ok(v) => {
                    aliases.insert(alias.name.clone(), v);
                    defined_at.insert(alias.name.clone(), (object.clone(), i));
                }
                Err(e) => problems.push(Problem::error(
                    &object,
                    format!("spec.communities[{i}].value"),
                    e.to_string(),
                )),
            }
        }
    }
    (aliases, problems)
}

/// Resolves a community as written in a BGPAdvertisement: an alias name first, then a
/// literal (as MetalLB's `getCommunityValue`).
pub fn resolve_community(
    s: &str,
    aliases: &BTreeMap<String, Community>,
) -> Result<Community, String> {
    if let Some(c) = aliases.get(s) {
        return Ok(*c);
    }
    s.parse::<Community>().map_err(|e| match e {
        addr::CommunityError::Format(_) => {
            format!("{s:?} is neither a community literal (AA:NN or large:A:B:C) nor the name of a Community alias")
        }
        other => other.to_string(),
    })
}
