//! Watches: the history after a resource version as a chunked stream of JSON lines, a 410
//! `ERROR` event for versions compacted away, bookmarks and the timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::route::{Filter, Route};
use super::{Body, Reply, Shared, status_object};

pub(super) fn watch_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({ "type": type_, "object": object })).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

pub(super) struct WatchState {
    pub(super) shared: Arc<Shared>,
    pub(super) filter: Filter,
    pub(super) rx: watch::Receiver<u64>,
    /// The last resource version this watch has covered.
    pub(super) last: u64,
    pub(super) epoch: u64,
    pub(super) deadline: tokio::time::Instant,
    pub(super) bookmarks: bool,
    pub(super) pending: VecDeque<Bytes>,
    pub(super) done: bool,
}

/// A watch response body; true if it is a 410 answer.
pub(super) fn start_watch(
    shared: &Arc<Shared>,
    route: &Route,
    params: &BTreeMap<String, String>,
) -> Result<(Body, bool), Reply> {
    let filter = Filter::new(route, params)?;
    let since = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            Reply::error(400, "BadRequest", format!("invalid resourceVersion {v:?}"))
        })?),
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let mut rx = shared.rv_tx.subscribe();
    rx.borrow_and_update();
    let store = shared.store.lock().unwrap();
    let mut pending = VecDeque::new();
    let last = match since {
        Some(n) if n < store.compacted => {
            let status = status_object(
                410,
                "Expired",
                format!("too old resource version: {n} ({})", store.compacted),
            );
            let line = watch_line("ERROR", &status);
            let body = StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(Frame::data(
                line,
            ))]));
            return Ok((body.boxed_unsync(), true));
        }
        Some(n) => n,
        None => {
            // No version: the current objects as ADDED, then changes.
            for (key, object) in &store.objects {
                if filter.matches(key, object)? {
                    pending.push_back(watch_line("ADDED", object));
                }
            }
            store.rv
        }
    };
    let state = WatchState {
        shared: shared.clone(),
        filter,
        rx,
        last,
        epoch: store.epoch,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        pending,
        done: false,
    };
    drop(store);
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(chunk) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(Frame::data(chunk)), st));
            }
            if st.done {
                return None;
            }
            st.rx.borrow_and_update();
            {
                let store = st.shared.store.lock().unwrap();
                if store.epoch != st.epoch {
                    return None;
                }
                for change in store.history.iter().filter(|c| c.rv > st.last) {
                    if st
                        .filter
                        .matches(&change.key, &change.object)
                        .unwrap_or(false)
                    {
                        st.pending
                            .push_back(watch_line(change.type_, &change.object));
                    }
                }
                st.last = st.last.max(store.rv);
            }
            if !st.pending.is_empty() {
                continue;
            }
            tokio::select! {
                changed = st.rx.changed() => if changed.is_err() { return None },
                _ = tokio::time::sleep_until(st.deadline) => {
                    // Like the real server, a bookmark with the version reached before the
                    // watch ends, so the client resumes from there.
                    st.done = true;
                    if st.bookmarks {
                        st.pending.push_back(watch_line("BOOKMARK", &json!({
                            "apiVersion": st.filter.kind.api_version(),
                            "kind": st.filter.kind.name(),
                            "metadata": { "resourceVersion": st.last.to_string() },
                        })));
                    }
                }
            }
        }
    });
    Ok((StreamBody::new(stream).boxed_unsync(), false))
}
