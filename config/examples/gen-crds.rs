//! Regenerates the checked-in CRDs under `deploy/crds/` from the Rust model:
//!     cargo run -p metalnet --example gen-crds [OUTPUT_DIR]

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(metalnet::crd::checked_in_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in metalnet::crd::files().context("serialising the CRDs")? {
        let path = dir.join(&name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
