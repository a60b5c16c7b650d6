//! The init's error: an errno and what was being done, rendered as `<context>: <strerror>`, the
//! form the host shows to requestors (e.g. `exec /bin/foo: No such file or directory`).

use std::fmt;

use nix::errno::Errno;

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError {
    /// The errno, or 0 when none applies.
    pub errno: i32,
    /// What was being done.
    pub context: String,
}

impl InitError {
    /// An error with an errno.
    pub fn sys(context: impl Into<String>, errno: Errno) -> Self {
        Self {
            errno: errno as i32,
            context: context.into(),
        }
    }

    /// An error from `std::io`.
    pub fn io(context: impl Into<String>, e: &std::io::Error) -> Self {
        Self {
            errno: e.raw_os_error().unwrap_or(0),
            context: if e.raw_os_error().is_some() {
                context.into()
            } else {
                format!("{}: {e}", context.into())
            },
        }
    }

    /// An error without an errno (bad request).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            errno: libc::EINVAL,
            context: message.into(),
        }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errno == 0 {
            f.write_str(&self.context)
        } else {
            // The C library's wording, as the requestor's own programs print it (nix's table
            // says "Try again" where they say "Resource temporarily unavailable").
            let text = std::io::Error::from_raw_os_error(self.errno).to_string();
            let suffix = format!(" (os error {})", self.errno);
            let text = text.strip_suffix(&suffix).unwrap_or(&text);
            write!(f, "{}: {text}", self.context)
        }
    }
}

/// Shorthand for results of init operations.
pub type Result<T> = std::result::Result<T, InitError>;

/// Adds context to a nix result.
pub trait Context<T> {
    /// Wraps the errno with `what`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| InitError::sys(what(), e))
    }
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| InitError::io(what(), &e))
    }
}
