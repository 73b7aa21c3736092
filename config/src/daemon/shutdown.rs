//! Shutdown on SIGTERM, SIGINT or SIGHUP, observed by every part of a daemon.
//!
//! SIGHUP shuts down cleanly too: the daemons watch their configuration, so there is nothing
//! to reload, and the usual sender of SIGHUP is a closing terminal, whose user expects the
//! process to stop (the default action would kill it without a gossip leave or BGP Cease).

use tokio::sync::watch;

/// A shutdown request, shared by clones. [`Shutdown::on_signals`] requests it on a signal;
/// [`Shutdown::request`] does so by hand (tests, `--once`).
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: std::sync::Arc<watch::Sender<Option<&'static str>>>,
    rx: watch::Receiver<Option<&'static str>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown nobody has requested yet.
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(None);
        Shutdown {
            tx: std::sync::Arc::new(tx),
            rx,
        }
    }

    /// A shutdown requested by SIGTERM, SIGINT or SIGHUP (a second signal exits at once,
    /// for an operator whose clean shutdown is taking too long). Needs a tokio runtime.
    pub fn on_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{SignalKind, signal};
        let shutdown = Shutdown::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => "SIGHUP",
                };
                if !first {
                    tracing::warn!(signal = name, "second signal: exiting now");
                    std::process::exit(130);
                }
                first = false;
                tracing::info!(signal = name, "shutting down");
                s.request(name);
            }
        });
        Ok(shutdown)
    }

    /// Requests the shutdown; `why` is logged by those who stop.
    pub fn request(&self, why: &'static str) {
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why);
                true
            } else {
                false
            }
        });
    }

    /// Whether shutdown was requested.
    pub fn requested(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Completes when shutdown is requested (at once if it already was).
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        // The sender lives as long as any clone of this Shutdown, including self.
        let _ = rx.wait_for(|v| v.is_some()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_completes_after_request_from_a_clone() {
        let s = Shutdown::new();
        assert!(!s.requested());
        let c = s.clone();
        let waiter = tokio::spawn(async move { c.wait().await });
        s.request("test");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("wait completes")
            .unwrap();
        assert!(s.requested());
        // Already requested: completes at once.
        s.wait().await;
    }
}
