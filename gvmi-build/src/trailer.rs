//! The GVMI trailer: `[crc32 of the JSON, LE][JSON][its length, 8 ASCII digits]` after the
//! squashfs, holding Docker's `ContainerConfig` as gvmkit-build writes it: the fields in Docker's
//! order, compact, and a field without a value left out rather than written as `null`.
//!
//! gvmkit-build takes the JSON from `docker inspect` of a container created from the image; this
//! module makes the same object from the image's own config. Where gvmkit-build's output is not
//! reproducible (a random `Hostname`, map keys in hash order) this writes `""` and sorted keys.
//! It drops `User` and this keeps it: the runtime (and the original one) run processes as the
//! image's user.

use serde::Serialize;
use serde_json::Value;

/// Largest JSON the 8-digit length can state.
pub const MAX_JSON_LEN: usize = 99_999_999;

/// Docker's `ContainerConfig`, field by field in the order Docker (and so gvmkit-build) writes
/// them.
#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// Always empty here (gvmkit-build: the temporary container's id).
    pub hostname: String,
    /// Always empty.
    pub domainname: String,
    /// `uid[:gid]` or `name[:group]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Always false for an image.
    pub attach_stdin: bool,
    /// Always false for an image.
    pub attach_stdout: bool,
    /// Always false for an image.
    pub attach_stderr: bool,
    /// The image's `EXPOSE`d ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<Value>,
    /// Always false for an image.
    pub tty: bool,
    /// Always false for an image.
    pub open_stdin: bool,
    /// Always false for an image.
    pub stdin_once: bool,
    /// `KEY=VALUE` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Default arguments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Docker's health check, as the image has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Value>,
    /// Windows-only flag, as the image has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
    /// The image id: its config's sha256, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The `VOLUME`s, each mapped to `{}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Value>,
    /// The working directory (`""` for `/`).
    pub working_dir: String,
    /// The entrypoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `ONBUILD` triggers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Value>,
    /// Labels.
    pub labels: Value,
    /// `STOPSIGNAL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// `SHELL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
}

/// Why an image config cannot become a trailer.
#[derive(Debug, thiserror::Error)]
pub enum TrailerError {
    /// A field of the wrong type.
    #[error("the image config's {field} is not {expected}")]
    Field {
        /// Docker's field name.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
    /// Larger than the trailer's length field can state.
    #[error("the image config is {0} bytes as JSON, more than a GVMI trailer holds")]
    TooLarge(usize),
}

/// A field of `obj` as `T`, absent and `null` alike as `None`.
fn field<T: serde::de::DeserializeOwned>(
    obj: &serde_json::Map<String, Value>,
    name: &'static str,
    expected: &'static str,
) -> Result<Option<T>, TrailerError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| TrailerError::Field {
                field: name,
                expected,
            }),
    }
}

/// A map whose values are all `{}` (volumes, ports), with sorted keys.
fn key_set(
    obj: &serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<Value>, TrailerError> {
    let map: Option<std::collections::BTreeMap<String, Value>> = field(obj, name, "an object")?;
    Ok(map.map(|m| {
        Value::Object(
            m.into_keys()
                .map(|k| (k, Value::Object(Default::default())))
                .collect(),
        )
    }))
}

impl ContainerConfig {
    /// From the `config` object of an OCI or Docker image config (`{"User": …, "Env": …}`;
    /// `None` when the image has none) and the image id (hex).
    pub fn from_image(
        config: Option<&Value>,
        image_id: Option<&str>,
    ) -> Result<Self, TrailerError> {
        let empty = serde_json::Map::new();
        let obj = match config {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(o)) => o,
            Some(_) => {
                return Err(TrailerError::Field {
                    field: "config",
                    expected: "an object",
                })
            }
        };
        let labels: Option<std::collections::BTreeMap<String, String>> =
            field(obj, "Labels", "an object of strings")?;
        Ok(Self {
            user: field::<String>(obj, "User", "a string")?.filter(|u| !u.is_empty()),
            exposed_ports: key_set(obj, "ExposedPorts")?,
            env: field(obj, "Env", "a list of strings")?,
            cmd: field(obj, "Cmd", "a list of strings")?,
            healthcheck: field(obj, "Healthcheck", "an object")?,
            args_escaped: field(obj, "ArgsEscaped", "a boolean")?,
            image: image_id.map(str::to_string),
            volumes: key_set(obj, "Volumes")?,
            working_dir: field(obj, "WorkingDir", "a string")?.unwrap_or_default(),
            entrypoint: field(obj, "Entrypoint", "a list of strings")?,
            on_build: field(obj, "OnBuild", "a list")?,
            labels: serde_json::to_value(labels.unwrap_or_default()).unwrap_or(Value::Null),
            stop_signal: field(obj, "StopSignal", "a string")?,
            shell: field(obj, "Shell", "a list of strings")?,
            ..Self::default()
        })
    }

    /// The compact JSON gvmkit-build would write.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, lists and JSON values always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The trailer for `json`.
pub fn trailer(json: &[u8]) -> Result<Vec<u8>, TrailerError> {
    if json.len() > MAX_JSON_LEN {
        return Err(TrailerError::TooLarge(json.len()));
    }
    let mut t = Vec::with_capacity(json.len() + 12);
    t.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    t.extend_from_slice(json);
    t.extend_from_slice(format!("{:08}", json.len()).as_bytes());
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_in_docker_s_order_and_absent_ones_left_out() {
        let config = serde_json::json!({
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin", "A=b"],
            "Cmd": ["/bin/sh"],
            "Entrypoint": null,
            "WorkingDir": "/golem/work",
            "Volumes": {"/golem/output": {}, "/golem/input": {}},
            "Labels": {"b": "2", "a": "1"},
            "ExposedPorts": {"80/tcp": {}},
            "OnBuild": null,
            "Unknown": 1
        });
        let json = ContainerConfig::from_image(Some(&config), Some("ab12"))
            .unwrap()
            .to_json();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"Hostname":"","Domainname":"","User":"1000:1000","AttachStdin":false,"AttachStdout":false,"AttachStderr":false,"ExposedPorts":{"80/tcp":{}},"Tty":false,"OpenStdin":false,"StdinOnce":false,"Env":["PATH=/usr/bin","A=b"],"Cmd":["/bin/sh"],"Image":"ab12","Volumes":{"/golem/input":{},"/golem/output":{}},"WorkingDir":"/golem/work","Labels":{"a":"1","b":"2"}}"#
        );
    }

    #[test]
    fn an_image_without_a_config_and_a_config_of_the_wrong_shape() {
        let json = ContainerConfig::from_image(None, None).unwrap().to_json();
        let parsed = image_loader::container_config::ContainerConfig::from_json(&json).unwrap();
        assert_eq!(parsed, Default::default());
        let bad = serde_json::json!({"Env": "PATH=/bin"});
        assert_eq!(
            ContainerConfig::from_image(Some(&bad), None)
                .unwrap_err()
                .to_string(),
            "the image config's Env is not a list of strings"
        );
    }

    #[test]
    fn the_runtime_s_reader_takes_the_trailer() {
        let config = serde_json::json!({"Env": ["X=1"], "Volumes": {"/data": {}}, "User": "7"});
        let json = ContainerConfig::from_image(Some(&config), Some("00"))
            .unwrap()
            .to_json();
        let parsed = image_loader::container_config::ContainerConfig::from_json(&json).unwrap();
        assert_eq!(parsed.env, ["X=1"]);
        assert_eq!(parsed.user, "7");
        assert_eq!(parsed.volumes.keys().collect::<Vec<_>>(), ["/data"]);
        let t = trailer(&json).unwrap();
        assert_eq!(&t[..4], &crc32fast::hash(&json).to_le_bytes());
        assert_eq!(&t[t.len() - 8..], format!("{:08}", json.len()).as_bytes());
    }
}
