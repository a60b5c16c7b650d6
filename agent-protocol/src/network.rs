//! What both sides check of a [`crate::ConfigureNetwork`]: the host before it sends one, the
//! guest before it applies one.

/// Most entries of each kind (networks or addresses, routes, host names, name servers) one
/// network request carries.
pub const MAX_ENTRIES: usize = 64;
/// Longest host name taken for `/etc/hosts`.
pub const MAX_HOST_NAME: usize = 253;

/// Whether `/etc/hosts` can carry `name`: not empty, at most [`MAX_HOST_NAME`] bytes, no
/// white space, control character or comment sign (a name must not add a line or a field).
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HOST_NAME
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        assert!(is_host_name("requestor"));
        assert!(is_host_name("a-node.local"));
        for bad in ["", "two words", "x\n1.2.3.4 evil", "a#b", "tab\there"] {
            assert!(!is_host_name(bad), "{bad:?}");
        }
        assert!(is_host_name(&"a".repeat(MAX_HOST_NAME)));
        assert!(!is_host_name(&"a".repeat(MAX_HOST_NAME + 1)));
    }
}
