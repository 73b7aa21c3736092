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
    /// Every definition of each user object, by file. The oldest (the one in force first) is
    /// in effect: a copy of an object in another file never replaces the one in use.
    pub(super) user: BTreeMap<ObjectRef, BTreeMap<PathBuf, UserDef>>,
    /// The age to give the next new definition.
    next_age: u64,
    /// The patch files of each object (normally one).
    pub(super) patches: BTreeMap<ObjectRef, BTreeSet<PathBuf>>,
    /// The files of each object the suite owns (normally one).
    pub(super) owned: BTreeMap<ObjectRef, BTreeSet<PathBuf>>,
    /// Manifests no longer listed, since when (deleted after a grace period).
    pub(super) missing: HashMap<PathBuf, Instant>,
    /// Objects with a patch and no definition, since when this process has seen them so
    /// (their patch is removed after [`super::ORPHAN_GRACE`]).
    pub(super) orphans: HashMap<ObjectRef, Instant>,
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
        let mut was_defined = BTreeSet::new();
        if let Some(old) = self.cache.remove(path) {
            match &old.content {
                Content::User(objects) => was_defined.extend(objects.iter().map(|o| o.obj.clone())),
                other => self.index(path, other, false, affected),
            }
        }
        let mut defined: BTreeMap<ObjectRef, Vec<usize>> = BTreeMap::new();
        if let Some(new) = &new {
            match &new.content {
                Content::User(objects) => {
                    for (i, o) in objects.iter().enumerate() {
                        defined.entry(o.obj.clone()).or_default().push(i);
                    }
                }
                other => self.index(path, other, true, affected),
            }
        }
        for obj in was_defined {
            if !defined.contains_key(&obj) {
                if let Some(defs) = self.user.get_mut(&obj) {
                    defs.remove(path);
                    if defs.is_empty() {
                        self.user.remove(&obj);
                    }
                }
                affected.insert(obj);
            }
        }
        for (obj, indexes) in defined {
            let defs = self.user.entry(obj.clone()).or_default();
            // A file read again keeps the age of the definitions it still holds.
            match defs.get_mut(path) {
                Some(def) => def.indexes = indexes,
                None => {
                    defs.insert(
                        path.to_path_buf(),
                        UserDef {
                            age: self.next_age,
                            indexes,
                        },
                    );
                    self.next_age += 1;
                }
            }
            affected.insert(obj);
        }
        if let Some(new) = new {
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
            Content::User(_) => {}
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
        self.user_definitions(obj).into_iter().next()
    }

    /// Every definition of the user object `obj`, oldest (the one in effect) first; within one
    /// file, in document order.
    fn user_definitions(&self, obj: &ObjectRef) -> Vec<&RawObject> {
        let Some(defs) = self.user.get(obj) else {
            return Vec::new();
        };
        let mut by_age: Vec<(&PathBuf, &UserDef)> = defs.iter().collect();
        by_age.sort_by_key(|(path, def)| (def.age, *path));
        by_age
            .into_iter()
            .filter_map(|(path, def)| match &self.cache.get(path)?.content {
                Content::User(objects) => Some(def.indexes.iter().filter_map(|i| objects.get(*i))),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Every definition of the user object `obj`, the one in effect first.
    pub(super) fn user_locations(&self, obj: &ObjectRef) -> Vec<&Location> {
        self.user_definitions(obj)
            .into_iter()
            .map(|o| &o.source)
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
    /// The file's size in bytes.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// When the file was last modified, for ordering files by age.
    pub(super) fn modified(&self) -> (i64, i64) {
        (self.mtime, self.mtime_nsec)
    }

    /// A stamp like this one that no file has, for a version cached that must be read again
    /// at the next refresh although the file did not change.
    pub(super) fn unread(self) -> Stamp {
        Stamp {
            mtime_nsec: -1,
            ..self
        }
    }

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
/// At most [`crate::manifest::MAX_FILE_BYTES`] and one byte are read, so that a file
/// growing while read cannot exhaust memory (the parser then rejects it as too large).
pub(super) fn read_stamped(path: &Path) -> std::io::Result<(Stamp, String)> {
    let file = std::fs::File::open(path)?;
    let stamp = Stamp::of(&file.metadata()?);
    let limit = crate::manifest::MAX_FILE_BYTES + 1;
    let mut text = String::with_capacity(stamp.len.min(limit) as usize);
    file.take(limit).read_to_string(&mut text)?;
    Ok((stamp, text))
}

/// A manifest that lost every object at once: the version seen so, and since when.
pub(super) struct Suspect {
    pub(super) stamp: Stamp,
    pub(super) since: Instant,
}

/// One file's definitions of one user object.
pub(super) struct UserDef {
    /// When the file first defined it, in definitions seen by this backend: lower is older.
    age: u64,
    /// Where in the file's [`Content::User`] (more than one: a duplicate within the file).
    indexes: Vec<usize>,
}
