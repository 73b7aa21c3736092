//! cni-stub: a CNI plugin for tests, speaking cniVersion 0.1.0 to 1.1.0 including GC and
//! STATUS (which Debian's plugins lack).
//!
//! It changes nothing on the machine. Every call is appended as one JSON line
//! `{"command", "env": {CNI_*}, "stdin": <the configuration, or the raw text>}` to the file
//! its configuration names in `"record"`. The configuration can make it fail:
//! `"fail": {"ADD": 110, "DEL": 111, "STATUS": 50, ...}` answers that command with a CNI error
//! of that code (and `"failMsg"` as its message). ADD answers `"result"` from the
//! configuration if given, else `prevResult` if given, else an interface named `CNI_IFNAME`
//! in `CNI_NETNS` with no address.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

fn main() -> ExitCode {
    let mut raw = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut raw);
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let env: serde_json::Map<String, Value> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_") || k.starts_with("METALNET_"))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let conf: Result<Value, _> = serde_json::from_slice(&raw);
    let version = conf
        .as_ref()
        .ok()
        .and_then(|c| c["cniVersion"].as_str())
        .unwrap_or("1.1.0")
        .to_string();
    if let Ok(conf) = &conf
        && let Some(path) = conf["record"].as_str()
    {
        let line = json!({"command": command, "env": env, "stdin": conf});
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            return fail(&version, 5, &format!("recording to {path}: {e}"));
        }
    }
    if command == "VERSION" {
        return print(&json!({"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}));
    }
    let conf = match conf {
        Ok(c) if c.is_object() => c,
        Ok(_) => return fail(&version, 6, "the configuration is not a JSON object"),
        Err(e) => return fail(&version, 6, &format!("decoding the configuration: {e}")),
    };
    if !SUPPORTED.contains(&version.as_str()) {
        return fail(
            &version,
            1,
            &format!("cniVersion {version:?} is not supported"),
        );
    }
    if let Some(code) = conf["fail"][command.as_str()].as_u64() {
        let msg = conf["failMsg"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("cni-stub told to fail {command}"));
        return fail(&version, code, &msg);
    }
    let need = |vars: &[&str]| -> Result<(), String> {
        match vars.iter().find(|v| std::env::var(v).is_err()) {
            Some(v) => Err(format!("{v} is not set")),
            None => Ok(()),
        }
    };
    let checked = match command.as_str() {
        "ADD" | "CHECK" => need(&["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]),
        "DEL" => need(&["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"]),
        "GC" | "STATUS" => need(&["CNI_PATH"]),
        other => Err(format!("unknown CNI_COMMAND {other:?}")),
    };
    if let Err(msg) = checked {
        return fail(&version, 4, &msg);
    }
    match command.as_str() {
        "ADD" => {
            let result = if let Some(r) = conf.get("result") {
                r.clone()
            } else if let Some(r) = conf.get("prevResult") {
                r.clone()
            } else {
                json!({
                    "cniVersion": version,
                    "interfaces": [{
                        "name": std::env::var("CNI_IFNAME").unwrap_or_default(),
                        "sandbox": std::env::var("CNI_NETNS").unwrap_or_default(),
                    }],
                    "ips": [],
                    "dns": {},
                })
            };
            print(&result)
        }
        _ => ExitCode::SUCCESS,
    }
}

fn print(v: &Value) -> ExitCode {
    println!("{v}");
    ExitCode::SUCCESS
}

fn fail(version: &str, code: u64, msg: &str) -> ExitCode {
    println!(
        "{}",
        json!({"cniVersion": version, "code": code, "msg": msg})
    );
    ExitCode::FAILURE
}
