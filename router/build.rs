//! Builds the service proxy's BPF programs (`bpf/*.c`) with clang into OUT_DIR, where
//! `proxy::loader` embeds them. clang comes from scripts/setup.sh (Debian `clang`, `libbpf-dev`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let dir = PathBuf::from("bpf");
    println!("cargo:rerun-if-changed=bpf");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("router/bpf exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    for src in sources {
        println!("cargo:rerun-if-changed={}", src.display());
        let obj = out
            .join(src.file_stem().expect("a file name"))
            .with_extension("o");
        // -g: aya needs BTF for `.maps`; the include path has asm/types.h on Debian.
        let status = Command::new(std::env::var("CLANG").unwrap_or_else(|_| "clang".into()))
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
            .arg("-I/usr/include/x86_64-linux-gnu")
            .arg("-Ibpf")
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "running clang for {} (install clang: scripts/setup.sh): {e}",
                    src.display()
                )
            });
        assert!(status.success(), "clang failed on {}", src.display());
    }
}
