//! The meta-plugin's overhead in thick mode: ADD through `multus-shim` (the runtime runs the
//! shim, which posts to the daemon, which runs the delegates) minus the same delegate run
//! alone, with the real bridge + host-local plugins, median over N pods. Both are started
//! from a thread inside the host namespace (where the daemon runs delegates), so neither
//! pays for `ip netns exec`. Pods alternate between the two, against drift.
//!
//! `cargo bench -p multus-shim --bench thick_overhead` (root; BENCH_PODS=40 by default).

#[path = "support/mod.rs"]
mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// If started as `__shim`: a shim that only forwards (what `multus-shim` does with
/// `daemonSocketDir`), for builds whose binary does not forward yet.
fn maybe_run_shim() {
    if std::env::args().nth(1).as_deref() != Some("__shim") {
        return;
    }
    use std::io::Read;
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let conf: Value = serde_json::from_slice(&stdin).unwrap_or(Value::Null);
    let socket = PathBuf::from(conf["daemonSocketDir"].as_str().unwrap_or("/run/multus"))
        .join("multus.sock");
    let req = multus_shim::cni::Request {
        env: std::env::vars().collect(),
        stdin,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(multus_shim::daemon::client::forward(&socket, req)) {
        Ok(Some(v)) => println!("{v}"),
        Ok(None) => {}
        Err(e) => {
            println!("{}", e.to_json("1.0.0"));
            std::process::exit(1);
        }
    }
    std::process::exit(0);
}

/// Runs `program` (`args`) with `env` and `stdin`; (time, success, stdout).
fn timed(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    stdin: &[u8],
) -> (Duration, bool, String) {
    let t = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        t.elapsed(),
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

fn main() {
    support::maybe_run_daemon();
    maybe_run_shim();
    if !lab_available() {
        return;
    }
    let n = env_usize("BENCH_PODS", 40);
    let warmup = 3;
    let mut lab = Lab::new("ov", 3 * (n + warmup));
    lab.start_daemon(&[]);
    let conf = lab.multus_conf();
    let conf_bytes = conf.to_string().into_bytes();
    // The delegate as the meta-plugin gives it: the same configuration.
    let bridge_bytes = lab.bridge().to_string().into_bytes();
    let real = env!("CARGO_BIN_EXE_multus-shim").to_string();
    let own = std::env::current_exe().unwrap().display().to_string();

    // Does the binary forward (thick) in this build? Else measure the same client code.
    let probe = timed(&real, &[], &lab.env("ADD", 0, "probe"), &conf_bytes);
    let (shim, shim_args): (String, Vec<&str>) = if probe.2.contains("not part of this build") {
        println!(
            "note: this build's multus-shim binary does not forward yet; the shim measured is the bench's own forwarding client (daemon::client::forward)"
        );
        (own, vec!["__shim"])
    } else {
        let _ = timed(&real, &[], &lab.env("DEL", 0, "probe"), &conf_bytes);
        (real, vec![])
    };

    let pods = 3 * (n + warmup);
    let envs: Vec<_> = (0..pods)
        .map(|i| {
            (
                lab.env("ADD", i, &format!("ov{i}")),
                lab.env("DEL", i, &format!("ov{i}")),
            )
        })
        .collect();
    let host = lab.host.name().to_string();
    let socket = lab.socket();
    let conf_value = conf.clone();
    let (alone, thick, direct) =
        metalnet::testing::block_on_in(&host, Duration::from_secs(900), move || async move {
            let bridge = format!("{PLUGINS}/bridge");
            let (mut alone, mut thick, mut direct) = (Vec::new(), Vec::new(), Vec::new());
            for (i, (add, _)) in envs.iter().enumerate() {
                if i % 3 == 2 {
                    // The daemon's share: the same request posted by this process, no shim.
                    let t = Instant::now();
                    let r = http(&socket, "POST", "/cni", &cni_body(add, &conf_value));
                    assert!(matches!(r, Ok((200, _))), "direct POST, pod {i}: {r:?}");
                    direct.push(t.elapsed());
                } else if i % 3 == 0 {
                    let (t, ok, out) = timed(&bridge, &[], add, &bridge_bytes);
                    assert!(ok, "bridge alone, pod {i}: {out}");
                    alone.push(t);
                } else {
                    let args: Vec<&str> = shim_args.clone();
                    let (t, ok, out) = timed(&shim, &args, add, &conf_bytes);
                    assert!(ok, "through the shim, pod {i}: {out}");
                    thick.push(t);
                }
            }
            for (i, (_, del)) in envs.iter().enumerate() {
                if i % 3 == 2 {
                    let _ = http(&socket, "POST", "/cni", &cni_body(del, &conf_value));
                } else if i % 3 == 0 {
                    timed(&bridge, &[], del, &bridge_bytes);
                } else {
                    timed(&shim, &shim_args, del, &conf_bytes);
                }
            }
            (
                alone.split_off(warmup),
                thick.split_off(warmup),
                direct.split_off(warmup),
            )
        });
    let left = lab.allocated();
    lab.stop_daemon();
    let (mut a, mut t) = (alone.clone(), thick.clone());
    let (ma, mt) = (percentile(&mut a, 50.0), percentile(&mut t, 50.0));
    let mut diffs: Vec<f64> = alone
        .iter()
        .zip(&thick)
        .map(|(a, t)| t.as_secs_f64() - a.as_secs_f64())
        .collect();
    diffs.sort_by(|x, y| x.total_cmp(y));
    let median_diff = diffs.get(diffs.len() / 2).copied().unwrap_or(0.0);
    println!(
        "== thick-mode overhead, bridge + host-local, {} pods each way",
        alone.len()
    );
    println!(
        "  delegate alone:        median {}  p99 {}",
        ms(ma),
        ms(percentile(&mut a, 99.0))
    );
    println!(
        "  through multus-shim:   median {}  p99 {}",
        ms(mt),
        ms(percentile(&mut t, 99.0))
    );
    println!(
        "  overhead: median of pairwise differences {:.1} ms; difference of medians {:.1} ms",
        median_diff * 1000.0,
        (mt.as_secs_f64() - ma.as_secs_f64()) * 1000.0
    );
    let mut d = direct.clone();
    println!(
        "  of which the daemon (POST /cni without a shim process): median {}; the shim process and its client: about {:.1} ms",
        ms(percentile(&mut d, 50.0)),
        (mt.as_secs_f64() - percentile(&mut d, 50.0).as_secs_f64()) * 1000.0
    );
    println!("  addresses left after DEL: {left}");
}
