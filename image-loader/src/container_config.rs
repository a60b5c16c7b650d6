//! Docker's `ContainerConfig`, as gvmkit-build stores it in the GVMI trailer: parsed tolerantly
//! (unknown fields ignored, `null` wherever a value may stand), with typed access to the fields the
//! runtime uses.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The parts of an image's configuration the runtime acts on. Field names follow Docker's JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `KEY=VALUE` entries for every process.
    #[serde(rename = "Env", default, deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    /// The image's entrypoint, argv form.
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    /// The image's default arguments, argv form.
    #[serde(rename = "Cmd", default, deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    /// Working directory of processes; empty means `/`.
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_as_default")]
    pub working_dir: String,
    /// Paths declared with `VOLUME`; the values are always `{}` in Docker's output.
    #[serde(rename = "Volumes", default, deserialize_with = "null_as_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    /// `uid[:gid]` or `name[:group]`; empty means root.
    #[serde(rename = "User", default, deserialize_with = "null_as_default")]
    pub user: String,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ContainerConfig {
    /// Parses the trailer JSON. Only an object whose known fields have the right types is a
    /// `ContainerConfig`; unknown fields are ignored.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        // serde would also accept a JSON array as a struct; a config is always an object.
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom(format!(
                "expected a JSON object, found {}",
                match value {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::String(_) => "a string",
                    serde_json::Value::Array(_) => "an array",
                    serde_json::Value::Object(_) => "an object",
                }
            )));
        }
        serde_json::from_value(value)
    }

    /// The declared volume paths, in sorted order.
    pub fn volume_paths(&self) -> impl Iterator<Item = &str> {
        self.volumes.keys().map(String::as_str)
    }

    /// The `User` field, parsed.
    pub fn user_spec(&self) -> Result<UserSpec, UserSpecError> {
        UserSpec::parse(&self.user)
    }
}

/// A user or group, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdOrName {
    /// A numeric id, used as is.
    Id(u32),
    /// A name, resolved inside the guest against the image's own `/etc/passwd` or `/etc/group`
    /// when a process starts (the host never reads the image's user database).
    Name(String),
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(n) => f.write_str(n),
        }
    }
}

/// Docker's `User`: `""` (root), `uid`, `uid:gid`, `name`, `name:group`, or a mix.
/// Without a group, a process gets the user's primary group from the image (gid 0 for root).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSpec {
    /// The user.
    pub user: IdOrName,
    /// The group, when given.
    pub group: Option<IdOrName>,
}

/// Why a `User` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid User {value:?} in the image config: {reason}")]
pub struct UserSpecError {
    /// The value from the image.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl UserSpec {
    /// Root, with root's group.
    pub fn root() -> Self {
        Self {
            user: IdOrName::Id(0),
            group: None,
        }
    }

    /// Parses Docker's `User` field.
    pub fn parse(value: &str) -> Result<Self, UserSpecError> {
        let fail = |reason| UserSpecError {
            value: value.to_string(),
            reason,
        };
        if value.is_empty() {
            return Ok(Self::root());
        }
        let (user, group) = match value.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (value, None),
        };
        let user = parse_id_or_name(user).map_err(fail)?;
        let group = group.map(parse_id_or_name).transpose().map_err(fail)?;
        Ok(Self { user, group })
    }
}

/// Longest user or group name accepted (Linux `LOGIN_NAME_MAX` is 256; useradd stops at 32).
const MAX_NAME_LEN: usize = 256;

fn parse_id_or_name(part: &str) -> Result<IdOrName, &'static str> {
    if part.is_empty() {
        return Err("a user or group part is empty");
    }
    if part.bytes().all(|b| b.is_ascii_digit()) {
        return part
            .parse()
            .map(IdOrName::Id)
            .map_err(|_| "a numeric id does not fit in 32 bits");
    }
    if part.len() > MAX_NAME_LEN {
        return Err("a user or group name is longer than 256 bytes");
    }
    if part.starts_with('-')
        || !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
    {
        return Err(
            "names may hold only letters, digits, '_', '-', '.', '$' and not start with '-'",
        );
    }
    Ok(IdOrName::Name(part.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_parse() {
        let json = br#"{"Hostname":"","Env":["PATH=/bin","A=b=c"],"Cmd":null,"Entrypoint":["/bin/sh","-c"],
            "WorkingDir":"/work","Volumes":{"/golem/input":{},"/golem/output":{}},"User":null,
            "Labels":{"x":"y"},"OnBuild":null,"ExposedPorts":{"80/tcp":{}}}"#;
        let c = ContainerConfig::from_json(json).unwrap();
        assert_eq!(c.env, ["PATH=/bin", "A=b=c"]);
        assert!(c.cmd.is_empty());
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.working_dir, "/work");
        assert_eq!(
            c.volume_paths().collect::<Vec<_>>(),
            ["/golem/input", "/golem/output"]
        );
        assert_eq!(c.user_spec().unwrap(), UserSpec::root());
    }

    #[test]
    fn all_null_and_empty() {
        let c = ContainerConfig::from_json(
            br#"{"Env":null,"Entrypoint":null,"Cmd":null,"WorkingDir":null,"Volumes":null,"User":null}"#,
        )
        .unwrap();
        assert_eq!(c, ContainerConfig::default());
        assert_eq!(ContainerConfig::from_json(b"{}").unwrap(), c);
    }

    #[test]
    fn not_a_container_config() {
        for bad in [
            &b"[]"[..],
            b"\"text\"",
            b"42",
            b"{\"Env\":5}",
            b"{\"Cmd\":[1,2]}",
            b"{\"Volumes\":[\"/a\"]}",
            b"{\"User\":{}}",
            b"{",
            b"",
        ] {
            assert!(
                ContainerConfig::from_json(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn user_forms() {
        use IdOrName::*;
        let ok = [
            ("", Id(0), None),
            ("1000", Id(1000), None),
            ("1000:100", Id(1000), Some(Id(100))),
            ("nobody", Name("nobody".into()), None),
            (
                "www-data:staff",
                Name("www-data".into()),
                Some(Name("staff".into())),
            ),
            ("app:0", Name("app".into()), Some(Id(0))),
        ];
        for (text, user, group) in ok {
            assert_eq!(
                UserSpec::parse(text).unwrap(),
                UserSpec { user, group },
                "{text}"
            );
        }
        for bad in [
            ":",
            "1000:",
            ":100",
            "a:b:c",
            "99999999999",
            "-x",
            "a b",
            "x/y",
        ] {
            let e = UserSpec::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }
}
