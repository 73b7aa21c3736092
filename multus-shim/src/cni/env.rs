//! The CNI environment of one call: `CNI_COMMAND` and the variables each command needs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::CniError;

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The CNI environment, validated for its command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Option<Command>,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, in order.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the environment of a call. Each command's required variables are checked as
    /// the spec lists them (ADD, CHECK: container id, netns, ifname; DEL: container id and
    /// ifname; GC, STATUS: `CNI_PATH`; VERSION: none but the command), error 4 naming the
    /// variable.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<CniEnv, CniError> {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let cmd = get("CNI_COMMAND");
        if cmd.is_empty() {
            return Err(invalid("CNI_COMMAND", "is not set"));
        }
        let command = Command::parse(&cmd).ok_or_else(|| {
            invalid(
                "CNI_COMMAND",
                &format!("is {cmd:?}, not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
            )
        })?;
        let mut out = CniEnv {
            command: Some(command),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS"))?,
            path: get("CNI_PATH")
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc | Command::Status => &["CNI_PATH"],
            Command::Version => &[],
        };
        for var in required {
            if get(var).is_empty() {
                return Err(invalid(
                    var,
                    &format!("is not set (required for {})", command.as_str()),
                ));
            }
        }
        if !out.container_id.is_empty() {
            check_container_id(&out.container_id)?;
        }
        if !out.ifname.is_empty() {
            check_ifname(&out.ifname).map_err(|r| invalid("CNI_IFNAME", &r))?;
        }
        out.netns = out.netns.trim().to_string();
        Ok(out)
    }

    /// The value of `key` in `CNI_ARGS` (the last one when repeated).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn invalid(var: &str, reason: &str) -> CniError {
    CniError::new(CniError::INVALID_ENVIRONMENT, format!("{var} {reason}"))
}

/// Splits `CNI_ARGS` (`K=V;K=V`); an item without `=` is error 4.
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for item in s.split(';').filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(invalid(
                "CNI_ARGS",
                &format!("item {item:?} is not KEY=VALUE"),
            ));
        };
        if k.is_empty() {
            return Err(invalid(
                "CNI_ARGS",
                &format!("item {item:?} has an empty key"),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Joins `CNI_ARGS` back.
pub fn join_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// The spec's container id: starts alphanumeric, then alphanumerics, `_`, `.`, `-`. It also
/// names cache files, so it must never be a path.
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "CNI_CONTAINERID",
            &format!(
                "is {id:?}: it must start with a letter or digit and hold only letters, digits, '_', '.', '-'"
            ),
        ))
    }
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:`, whitespace, not `.` or `..`.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err(format!("{name:?} holds '/', ':', a NUL or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn required_variables_per_command() {
        let e = CniEnv::from_env(&env(&[])).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_COMMAND is not set"));
        let e = CniEnv::from_env(&env(&[("CNI_COMMAND", "FOO")])).unwrap_err();
        assert!(e.msg.starts_with("CNI_COMMAND is \"FOO\""), "{}", e.msg);
        let e = CniEnv::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.starts_with("CNI_NETNS is not set"), "{}", e.msg);
        // DEL does not need the netns.
        let ok = CniEnv::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "A=1;B=x=y"),
            ("CNI_PATH", "/a::/b"),
        ]))
        .unwrap();
        assert_eq!(ok.command, Some(Command::Del));
        assert_eq!(ok.arg("B"), Some("x=y"));
        assert_eq!(ok.path, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        CniEnv::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        for cmd in ["GC", "STATUS"] {
            let e = CniEnv::from_env(&env(&[("CNI_COMMAND", cmd)])).unwrap_err();
            assert!(e.msg.starts_with("CNI_PATH is not set"), "{}", e.msg);
            CniEnv::from_env(&env(&[("CNI_COMMAND", cmd), ("CNI_PATH", "/opt/cni/bin")])).unwrap();
        }
    }

    #[test]
    fn bad_values() {
        let base = [("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")];
        for id in ["../x", "-a", "a/b", "a b"] {
            let mut e = env(&base);
            e.insert("CNI_CONTAINERID".into(), id.into());
            let err = CniEnv::from_env(&e).unwrap_err();
            assert_eq!(err.code, 4);
            assert!(err.msg.starts_with("CNI_CONTAINERID"), "{}", err.msg);
        }
        let mut e = env(&base);
        e.insert("CNI_CONTAINERID".into(), "c".into());
        e.insert("CNI_ARGS".into(), "A=1;junk".into());
        let err = CniEnv::from_env(&e).unwrap_err();
        assert!(err.msg.contains("\"junk\""), "{}", err.msg);
        e.insert("CNI_ARGS".into(), "".into());
        e.insert("CNI_IFNAME".into(), "a-very-long-interface".into());
        let err = CniEnv::from_env(&e).unwrap_err();
        assert!(err.msg.starts_with("CNI_IFNAME"), "{}", err.msg);
    }

    #[test]
    fn args_round_trip() {
        let a = parse_args("IgnoreUnknown=true;K8S_POD_NAME=p").unwrap();
        assert_eq!(join_args(&a), "IgnoreUnknown=true;K8S_POD_NAME=p");
    }
}
