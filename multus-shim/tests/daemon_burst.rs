//! The daemon under load, with requests that reach real (slow) delegates: a stub CNI plugin,
//! a shell script in a temporary binDir that sleeps on ADD and logs when it starts and ends.
//! Checks the concurrency bound, error 11 past the queue, that a request whose client went
//! away still finishes, and the drain on shutdown.

mod daemon_support;

use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::{Daemon, body_for, http, wait_for};
use daemon_support::{stub_conf as conf, stub_env as env, stub_plugin};

/// The most ADDs of the stub running at once, from its log.
fn max_concurrency(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut events: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            let kind = p.next()?;
            let _id = p.next()?;
            let t: u128 = p.next()?.parse().ok()?;
            Some((t, if kind == "start" { 1 } else { -1 }))
        })
        .collect();
    // An end and a start at the same instant: count the end first.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

fn ended(log: &Path, container: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with(&format!("end {container} ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_200_adds_runs_at_most_n_and_refuses_past_the_queue_with_11() {
    let d = Daemon::start(&["--max-concurrent", "4", "--max-queued", "16"]).await;
    let bin = stub_plugin(d.dir.path(), "0.4");
    let conf = conf(d.dir.path(), &bin);
    d.set_ready();
    d.wait_ready().await;
    let socket = d.socket.clone();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (socket, conf) = (socket.clone(), conf.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("burst{i:03}");
            let t = Instant::now();
            let r = http(&socket, "POST", "/cni", &body_for(&env("ADD", &id), &conf)).await;
            (r, t.elapsed())
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (r, took) = t.await.unwrap();
        let (status, body) = r.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        match status {
            200 => {
                assert_eq!(v["Result"]["cniVersion"], "1.0.0", "{body}");
                ok += 1;
            }
            400 => {
                assert_eq!(v["code"], 11, "{body}");
                let msg = v["msg"].as_str().unwrap();
                assert!(msg.contains("--max-queued 16"), "{msg}");
                // Refused at once, not after waiting in line.
                assert!(took < Duration::from_secs(2), "refusal took {took:?}");
                busy += 1;
            }
            s => panic!("unexpected status {s}: {body}"),
        }
    }
    eprintln!(
        "200 ADDs: {ok} served, {busy} refused with 11, in {:?}",
        start.elapsed()
    );
    assert!(
        ok >= 20,
        "at least the running and queued ones are served: {ok}"
    );
    assert!(busy >= 100, "most of the burst is refused: {busy}");
    assert_eq!(ok + busy, 200);
    let max = max_concurrency(&d.dir.path().join("log"));
    assert!(
        max <= 4,
        "at most --max-concurrent delegates at once, saw {max}"
    );
    assert!(max >= 2, "requests do run concurrently, saw {max}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_whose_client_went_away_still_finishes() {
    let d = Daemon::start(&[]).await;
    let bin = stub_plugin(d.dir.path(), "0.5");
    let conf = conf(d.dir.path(), &bin);
    d.set_ready();
    d.wait_ready().await;
    let socket = d.socket.clone();
    let body = body_for(&env("ADD", "gone1"), &conf);
    let req = tokio::spawn(async move { http(&socket, "POST", "/cni", &body).await });
    let log = d.dir.path().join("log");
    let l = log.clone();
    wait_for("the delegate to start", Duration::from_secs(10), || {
        let l = l.clone();
        async move { std::fs::read_to_string(&l).is_ok_and(|t| t.contains("start gone1")) }
    })
    .await;
    // The runtime's timeout killed the shim: its connection closes mid-request.
    req.abort();
    wait_for("the delegate to finish", Duration::from_secs(10), || {
        let l = log.clone();
        async move { ended(&l, "gone1") }
    })
    .await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_requests_refuses_new_adds_and_serves_del() {
    let d = Daemon::start(&["--shutdown-grace", "20"]).await;
    let bin = stub_plugin(d.dir.path(), "1");
    let conf = conf(d.dir.path(), &bin);
    d.set_ready();
    d.wait_ready().await;
    let socket = d.socket.clone();
    let (s, c) = (socket.clone(), conf.clone());
    let running = tokio::spawn(async move {
        http(&s, "POST", "/cni", &body_for(&env("ADD", "drain1"), &c)).await
    });
    let l = d.dir.path().join("log");
    wait_for("the delegate to start", Duration::from_secs(10), || {
        let l = l.clone();
        async move { std::fs::read_to_string(&l).is_ok_and(|t| t.contains("start drain1")) }
    })
    .await;
    d.shutdown.request("test");
    let (status, body) = http(&socket, "GET", "/readyz", "").await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    let (status, body) = http(
        &socket,
        "POST",
        "/cni",
        &body_for(&env("ADD", "late"), &conf),
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(
        body.contains("\"code\":11") && body.contains("shutting down"),
        "{body}"
    );
    let (status, body) = http(
        &socket,
        "POST",
        "/cni",
        &body_for(&env("DEL", "drain0"), &conf),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "DEL is served while draining: {body}");
    let (status, body) = running.await.unwrap().unwrap();
    assert_eq!(status, 200, "the running ADD finished: {body}");
    let sock = socket.clone();
    d.stop().await;
    assert!(!sock.exists());
}
