//! Cost of status patches on the state-directory backend: for each size N, a directory with
//! N Services (one file each) and N `patch_status` calls, one per Service, in sequence.
//!
//! `cargo bench -p metalnet --bench state_dir_writes [-- SIZE...]` (default 1000 10000).
//! `STATE_DIR_BENCH_MAX_WRITES=K` times only the first K patches of each size (to sample a
//! slow build without waiting for all of them).

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

fn main() -> Result<(), Box<dyn std::error::Error>> {
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
