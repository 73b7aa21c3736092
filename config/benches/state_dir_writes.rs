//! Cost of status patches on the state-directory backend: for each size N, a directory with
//! N Services (one file each) and N `patch_status` calls, one per Service, in sequence.
//!
//! `cargo bench -p metalnet --bench state_dir_writes [-- SIZE...]` (default 1000 10000).
//! `STATE_DIR_BENCH_MAX_WRITES=K` times only the first K patches of each size (to sample a
//! slow build without waiting for all of them).
//!
//! `-- one-file N` instead: N Services as the documents of one file (`-- list N`: as one
//! `kind: List`, as `kubectl get -o yaml` prints them); prints the time to the first
//! snapshot, the process's peak RSS, and the time until an edit of one Service in that file
//! is in the snapshot.

use std::time::{Duration, Instant};

use metalnet::state::{ClusterState, Kind, ObjectRef, Source};
use metalnet::testing::{Manifest, service};
use serde_json::json;

fn ip(i: usize) -> String {
    // 198.18.0.0/15 (benchmarking range): enough addresses for any size run here.
    format!("198.18.{}.{}", (i / 256) % 256, i % 256)
}

async fn run(size: usize, max_writes: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let services = dir.path().join("services");
    std::fs::create_dir(&services)?;
    for i in 0..size {
        let name = format!("svc-{i:05}");
        std::fs::write(services.join(format!("{name}.yaml")), service(&name).yaml())?;
    }
    let started = Instant::now();
    let state = ClusterState::start(Source::Dir(dir.path().to_path_buf()), Kind::ALL).await?;
    let start_time = started.elapsed();
    assert_eq!(state.snapshot().services.len(), size);

    let writes = size.min(max_writes);
    let began = Instant::now();
    for i in 0..writes {
        let obj = ObjectRef::new(Kind::Service, Some("default"), &format!("svc-{i:05}"));
        let status = json!({"loadBalancer": {"ingress": [{"ip": ip(i)}]}});
        state.patch_status(&obj, status).await?;
    }
    let total = began.elapsed();
    let per = total / u32::try_from(writes.max(1))?;
    println!(
        "{size:>6} services: start {:>8.1} ms; {writes:>6} status patches {:>9.1} ms ({:>8.1} µs each)",
        ms(start_time),
        ms(total),
        per.as_secs_f64() * 1e6,
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `VmHWM` and `VmRSS` of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn one_file_text(size: usize, as_list: bool, edited: Option<usize>) -> String {
    let port = |i: usize| if Some(i) == edited { 8080 } else { 80 };
    let mut text = String::new();
    if as_list {
        text.push_str("apiVersion: v1\nkind: List\nitems:\n");
        for i in 0..size {
            text.push_str(&format!(
                "- apiVersion: v1\n  kind: Service\n  metadata:\n    name: svc-{i:05}\n    namespace: default\n  spec:\n    type: LoadBalancer\n    ports:\n    - port: {}\n",
                port(i)
            ));
        }
    } else {
        for i in 0..size {
            text.push_str("---\n");
            text.push_str(
                &service(&format!("svc-{i:05}"))
                    .spec("ports", json!([{ "port": port(i) }]))
                    .yaml(),
            );
        }
    }
    text
}

async fn run_one_file(size: usize, as_list: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, one_file_text(size, as_list, None))?;
    let bytes = std::fs::metadata(&file)?.len();
    let started = Instant::now();
    let state = ClusterState::start(Source::Dir(dir.path().to_path_buf()), Kind::ALL).await?;
    let start_time = started.elapsed();
    let loaded = state.snapshot().services.len();
    let (hwm, rss) = rss_mib();

    // One Service edited; the file replaced atomically, as an editor or `kubectl` would.
    let edited = size / 2;
    let tmp = dir.path().join(".services.yaml.tmp");
    std::fs::write(&tmp, one_file_text(size, as_list, Some(edited)))?;
    let began = Instant::now();
    std::fs::rename(&tmp, &file)?;
    let key = ObjectRef::new(Kind::Service, Some("default"), &format!("svc-{edited:05}")).key();
    let deadline = began + Duration::from_secs(600);
    loop {
        let port = state
            .snapshot()
            .services
            .get(&key)
            .and_then(|s| Some(s.spec.as_ref()?.ports.as_ref()?.first()?.port));
        if port == Some(8080) {
            break;
        }
        if Instant::now() > deadline {
            return Err("the edit was not seen within 600 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reload = began.elapsed();
    println!(
        "{size:>6} services in one {} file ({:.1} MiB): {loaded} loaded; first snapshot {:>9.1} ms; peak RSS {hwm:.0} MiB (now {rss:.0}); one edit seen after {:>9.1} ms",
        if as_list {
            "kind: List"
        } else {
            "multi-document"
        },
        bytes as f64 / 1048576.0,
        ms(start_time),
        ms(reload),
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let [mode, n] = args.as_slice()
        && (mode == "one-file" || mode == "list")
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(run_one_file(n.parse()?, mode == "list"));
    }
    // `cargo bench` passes `--bench`; every other argument is a size.
    let mut sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000];
    }
    let max_writes = match std::env::var("STATE_DIR_BENCH_MAX_WRITES") {
        Ok(v) => v.parse()?,
        Err(_) => usize::MAX,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    for size in sizes {
        rt.block_on(run(size, max_writes))?;
    }
    Ok(())
}
