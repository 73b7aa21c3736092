//! Back-pressure for delegate executions: at most `max_concurrent` requests run at once, at
//! most `max_queued` wait, and past that a request is refused at once (the daemon answers
//! CNI error 11, which the runtime retries) instead of piling up. Each waiting request holds
//! only its small decoded body, and each running one its delegate processes, so the
//! daemon's memory is bounded by the two limits rather than by the size of a burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits and the current counts.
#[derive(Debug)]
pub struct Limiter {
    running: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    queued: Arc<AtomicUsize>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "multus daemon busy: {max_concurrent} requests running and {max_queued} queued \
     (--max-concurrent {max_concurrent}, --max-queued {max_queued}); try again later"
)]
pub struct Busy {
    pub max_concurrent: usize,
    pub max_queued: usize,
}

/// The right to run one request; dropping it lets the next one run.
#[derive(Debug)]
pub struct Permit {
    _permit: OwnedSemaphorePermit,
}

/// Counts one queued request for as long as it lives, also when the waiting future is
/// dropped (the client went away while queued).
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Limiter {
    /// `max_concurrent` is at least 1.
    pub fn new(max_concurrent: usize, max_queued: usize) -> Limiter {
        let max_concurrent = max_concurrent.max(1);
        Limiter {
            running: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_queued,
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a slot, or refuses at once when the queue is full.
    pub async fn acquire(&self) -> Result<Permit, Busy> {
        if let Ok(p) = self.running.clone().try_acquire_owned() {
            return Ok(Permit { _permit: p });
        }
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < self.max_queued).then_some(q + 1)
            });
        if reserved.is_err() {
            return Err(self.busy());
        }
        let _queued = Queued(self.queued.clone());
        // The semaphore is never closed, so acquiring only fails if it were.
        match self.running.clone().acquire_owned().await {
            Ok(p) => Ok(Permit { _permit: p }),
            Err(_) => Err(self.busy()),
        }
    }

    fn busy(&self) -> Busy {
        Busy {
            max_concurrent: self.max_concurrent,
            max_queued: self.max_queued,
        }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.running.available_permits()
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_queues_then_refuses() {
        let l = Arc::new(Limiter::new(2, 3));
        let a = l.acquire().await.unwrap();
        let _b = l.acquire().await.unwrap();
        assert_eq!(l.running(), 2);
        let mut waiting = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            waiting.push(tokio::spawn(async move { l.acquire().await.map(|_| ()) }));
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while l.queued() < 3 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        let busy = l.acquire().await.unwrap_err();
        assert!(busy.to_string().contains("--max-queued 3"), "{busy}");
        drop(a);
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        assert_eq!(l.queued(), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue() {
        let l = Limiter::new(1, 1);
        let _a = l.acquire().await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), l.acquire()).await;
        assert!(r.is_err(), "waits while the slot is taken");
        assert_eq!(l.queued(), 0, "the cancelled waiter no longer counts");
        assert!(
            tokio::time::timeout(Duration::from_millis(20), l.acquire())
                .await
                .is_err(),
            "queued again, not refused"
        );
    }

    #[tokio::test]
    async fn zero_queue_refuses_as_soon_as_all_run() {
        let l = Limiter::new(0, 0);
        assert_eq!(l.max_concurrent(), 1);
        let _a = l.acquire().await.unwrap();
        assert!(l.acquire().await.is_err());
    }
}
