//! The ExeScript: yagna's list of commands for an activity, in its JSON form —
//! `[{"deploy": {}}, {"start": {"args": []}}, {"run": {"entry_point": "/bin/sh", "args": ["-c", "…"]}},
//! {"transfer": {"from": "…", "to": "container:/golem/output/x"}}, {"terminate": {}}]`.
//! Fields this runner does not use (`capture`, `format`, `depth`, `fileset`, a network's
//! `nodes`…) are accepted and ignored, as the exe-unit accepts them.

use serde::Deserialize;

/// One command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// Deploy the image into the activity's workdir.
    Deploy(Deploy),
    /// Boot and start serving the runtime API.
    Start(Start),
    /// Run a program in the VM.
    Run(Run),
    /// Copy a file between the host and a volume.
    Transfer(Transfer),
    /// Shut the VM down.
    Terminate(Empty),
}

/// `deploy`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Deploy {
    /// The VM's hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The volume override, in either of yagna's forms (a list of paths, or a map from path
    /// to `host`, `ram` or `storage`); handed to the runtime as `--volume-override`, which
    /// checks it.
    #[serde(default)]
    pub volumes: Option<serde_json::Value>,
    /// The VPN networks this node joins (yagna's `deploy.net`).
    #[serde(default)]
    pub net: Vec<Net>,
    /// Names for `/etc/hosts`: name → IP.
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, String>,
}

/// One VPN network of `deploy.net`, as yagna's requestor side writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Net {
    /// The network's id.
    #[serde(default)]
    pub id: String,
    /// The network's address.
    pub ip: String,
    /// Its mask (default `255.255.255.0`).
    #[serde(default)]
    pub mask: Option<String>,
    /// The requestor's address on it, if any.
    #[serde(default)]
    pub gateway: Option<String>,
    /// This node's address on it.
    pub node_ip: String,
}

/// `start`'s body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Start {
    /// Arguments for the runtime's `start`.
    #[serde(default)]
    pub args: Vec<String>,
}

/// `run`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Run {
    /// The program.
    pub entry_point: String,
    /// Its arguments (without argv[0]).
    #[serde(default)]
    pub args: Vec<String>,
}

/// `transfer`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Transfer {
    /// Source.
    pub from: String,
    /// Destination.
    pub to: String,
}

/// An empty body (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Empty {}

impl Command {
    /// The command's name as written in the script.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Deploy(_) => "deploy",
            Command::Start(_) => "start",
            Command::Run(_) => "run",
            Command::Transfer(_) => "transfer",
            Command::Terminate(_) => "terminate",
        }
    }
}

/// Parses a script; the error says which command is wrong.
pub fn parse(text: &str) -> Result<Vec<Command>, String> {
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("not an ExeScript (a JSON list): {e}"))?;
    raw.into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value(v.clone()).map_err(|e| {
                let name = v
                    .as_object()
                    .and_then(|o| o.keys().next().cloned())
                    .unwrap_or_else(|| v.to_string());
                format!("command {} ({name}): {e}", i + 1)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command_and_ignores_extra_fields() {
        let s = parse(
            r#"[{"deploy": {"net": [{"id": "n1", "ip": "192.168.0.0", "mask": "255.255.255.0",
                             "gateway": "192.168.0.1", "nodeIp": "192.168.0.2",
                             "nodes": {"192.168.0.2": "0xabc"}}],
                            "hosts": {"a": "192.168.0.2"},
                            "volumes": {"/data": {"storage": {"size": "1GiB"}}}}},
                {"start": {"args": []}},
                {"run": {"entry_point": "/bin/sh", "args": ["-c", "echo hi"], "capture": {}}},
                {"transfer": {"from": "file:///tmp/a", "to": "container:/golem/input/a", "format": null}},
                {"terminate": {}}]"#,
        )
        .unwrap();
        assert_eq!(
            s,
            vec![
                Command::Deploy(Deploy {
                    hostname: None,
                    volumes: Some(serde_json::json!({"/data": {"storage": {"size": "1GiB"}}})),
                    net: vec![Net {
                        id: "n1".into(),
                        ip: "192.168.0.0".into(),
                        mask: Some("255.255.255.0".into()),
                        gateway: Some("192.168.0.1".into()),
                        node_ip: "192.168.0.2".into(),
                    }],
                    hosts: [("a".to_string(), "192.168.0.2".to_string())].into(),
                }),
                Command::Start(Start::default()),
                Command::Run(Run {
                    entry_point: "/bin/sh".into(),
                    args: vec!["-c".into(), "echo hi".into()]
                }),
                Command::Transfer(Transfer {
                    from: "file:///tmp/a".into(),
                    to: "container:/golem/input/a".into()
                }),
                Command::Terminate(Empty {}),
            ]
        );
        assert_eq!(s[2].name(), "run");
    }

    #[test]
    fn errors_name_the_command() {
        assert!(parse("{}").unwrap_err().starts_with("not an ExeScript"));
        let e = parse(r#"[{"deploy": {}}, {"sign": {}}]"#).unwrap_err();
        assert!(e.starts_with("command 2 (sign): unknown variant"), "{e}");
        let e = parse(r#"[{"run": {"args": []}}]"#).unwrap_err();
        assert!(
            e.contains("command 1 (run): missing field `entry_point`"),
            "{e}"
        );
    }
}
