//! Networking as yagna's exe-unit drives it: the transports it names on the command line
//! ([`endpoint`]: `--vpn-endpoint`, `--inet-endpoint`) and what a runtime-API `CreateNetwork`
//! becomes in the guest ([`guest_config`]). Pure code; the host sockets are
//! [`crate::host::net_socket`], the cards [`crate::vm_spec`].

pub mod endpoint;
pub mod guest_config;

pub use endpoint::{Interface, Transport};
