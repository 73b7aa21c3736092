//! What is known of the directory's files: their stamps, contents and the indexes from
//! objects to the files that define them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::manifest::{Location, RawObject};
use crate::state::ObjectRef;

/// What is known of the directory: every file read, and indexes from objects to the files
/// that define them, kept in step with `cache` by [`Files::set`].
#[derive(Default)]
pub(super) struct Files {
    /// Every file read, with what it held when it had this stamp.
    pub(super) cache: BTreeMap<PathBuf, Cached>,
    /// Every definition of each user object: the file and the object's index in that file's
    /// [`Content::User`], in path order; the first is in effect.
    pub(super) user: BTreeMap<ObjectRef, BTreeSet<(PathBuf, usize)>>,
    /// The patch files of each object (normally one).
    pub(super) patches: BTreeMap<ObjectRef, BTreeSet<PathBuf>>,
    /// The files of each object the suite owns (normally one).
    pub(super) owned: BTreeMap<ObjectRef, BTreeSet<PathBuf>>,
    /// Manifests held back because they lost every object at once, with since when.
    pub(super) suspects: HashMap<PathBuf, Suspect>,
    /// Problems (duplicates) last logged about each object, to log each once.
    pub(super) warned: BTreeMap<ObjectRef, BTreeSet<String>>,
}

impl Files {
    /// Replaces what is cached for `path` (`None`: the file is gone), updating the indexes;
    /// every object the old or new content defines is added to `affected`.
    pub(super) fn set(
        &mut self,
        path: &Path,
        new: Option<Cached>,
        affected: &mut BTreeSet<ObjectRef>,
    ) {
        if let Some(old) = self.cache.remove(path) {
            self.index(path, &old.content, false, affected);
        }
        if let Some(new) = new {
            self.index(path, &new.content, true, affected);
            self.cache.insert(path.to_path_buf(), new);
        }
    }

    fn index(
        &mut self,
        path: &Path,
        content: &Content,
        add: bool,
        affected: &mut BTreeSet<ObjectRef>,
    ) {
        match content {
            Content::User(objects) => {
                for (i, o) in objects.iter().enumerate() {
                    toggle(&mut self.user, &o.obj, (path.to_path_buf(), i), add);
                    affected.insert(o.obj.clone());
                }
            }
            Content::Patch(obj, _) => {
                toggle(&mut self.patches, obj, path.to_path_buf(), add);
                affected.insert(obj.clone());
            }
            Content::Owned(obj, _) => {
                toggle(&mut self.owned, obj, path.to_path_buf(), add);
                affected.insert(obj.clone());
            }
            Content::Ignored => {}
        }
    }

    /// The user object in effect for `obj`, if any.
    pub(super) fn user_object(&self, obj: &ObjectRef) -> Option<&RawObject> {
        let (path, i) = self.user.get(obj)?.first()?;
        match &self.cache.get(path)?.content {
            Content::User(objects) => objects.get(*i),
            _ => None,
        }
    }

    /// Every definition of the user object `obj`, the one in effect first.
    pub(super) fn user_locations(&self, obj: &ObjectRef) -> Vec<&Location> {
        let Some(defs) = self.user.get(obj) else {
            return Vec::new();
        };
        defs.iter()
            .filter_map(|(path, i)| match &self.cache.get(path)?.content {
                Content::User(objects) => objects.get(*i).map(|o| &o.source),
                _ => None,
            })
            .collect()
    }

    /// The value of the status file in effect among `paths`: the one the suite writes
    /// (`canonical`) if present, else the first in path order.
    pub(super) fn status_value<'a>(
        &'a self,
        paths: Option<&'a BTreeSet<PathBuf>>,
        canonical: Option<&Path>,
    ) -> Option<(&'a PathBuf, &'a Value)> {
        let paths = paths?;
        let path = canonical
            .and_then(|c| paths.get(c))
            .or_else(|| paths.first())?;
        match &self.cache.get(path)?.content {
            Content::Patch(_, v) | Content::Owned(_, v) => Some((path, v)),
            _ => None,
        }
    }
}

fn toggle<T: Ord>(map: &mut BTreeMap<ObjectRef, BTreeSet<T>>, obj: &ObjectRef, item: T, add: bool) {
    if add {
        map.entry(obj.clone()).or_default().insert(item);
    } else if let Some(set) = map.get_mut(obj) {
        set.remove(&item);
        if set.is_empty() {
            map.remove(obj);
        }
    }
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    pub(super) fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

pub(super) struct Cached {
    pub(super) stamp: Stamp,
    pub(super) content: Content,
}

pub(super) enum Content {
    /// A user manifest: the objects in effect from it.
    User(Vec<RawObject>),
    /// A merge patch onto a user object.
    Patch(ObjectRef, Value),
    /// An object the suite owns.
    Owned(ObjectRef, Value),
    /// A status file that could not be read (already logged) or is not named like one.
    Ignored,
}

/// Reads a file with the stamp of the version read.
pub(super) fn read_stamped(path: &Path) -> std::io::Result<(Stamp, String)> {
    let mut file = std::fs::File::open(path)?;
    let stamp = Stamp::of(&file.metadata()?);
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((stamp, text))
}

/// A manifest that lost every object at once: the version seen so, and since when.
pub(super) struct Suspect {
    pub(super) stamp: Stamp,
    pub(super) since: Instant,
}
