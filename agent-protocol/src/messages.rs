//! The messages, as prost structs (field numbers are the wire contract: never reuse one).

/// A request from the host.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    /// What is asked.
    #[prost(oneof = "request::Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10")]
    pub body: Option<request::Body>,
}

/// The kinds of request.
pub mod request {
    /// One request.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Version handshake; answered with [`super::response::Body::Hello`].
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        /// Start a process; answered with [`super::response::Body::Started`].
        #[prost(message, tag = "2")]
        Run(super::RunProcess),
        /// Send a signal to a process started by [`Body::Run`].
        #[prost(message, tag = "3")]
        Kill(super::KillProcess),
        /// Mount a virtio-fs tag inside the image root.
        #[prost(message, tag = "4")]
        Mount(super::MountVolume),
        /// Flush file systems.
        #[prost(message, tag = "5")]
        Sync(super::Empty),
        /// Stop every process, sync, unmount and power off. Answered before the power-off.
        #[prost(message, tag = "6")]
        Shutdown(super::Empty),
        /// Write to (or close) the stdin of a process started with `stdin = true`.
        #[prost(message, tag = "7")]
        Stdin(super::WriteStdin),
        /// Mount a tmpfs of a fixed size inside the image root (a `ram` volume).
        #[prost(message, tag = "8")]
        MountRam(super::MountRam),
        /// Mount the ext4 file system of a disk inside the image root (a `storage` volume).
        #[prost(message, tag = "9")]
        MountDisk(super::MountDisk),
        /// Configure one network card (addresses, MTU, routes) and the name files.
        #[prost(message, tag = "10")]
        ConfigureNetwork(super::ConfigureNetwork),
    }
}

/// No fields.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// Version handshake.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// The sender's protocol version ([`crate::VERSION`]).
    #[prost(uint32, tag = "1")]
    pub version: u32,
}

/// A process to start, chrooted into the image root.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunProcess {
    /// Program: absolute, or looked up in the `PATH` of `env`.
    #[prost(string, tag = "1")]
    pub path: String,
    /// The whole argv, argv\[0\] included.
    #[prost(string, repeated, tag = "2")]
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; the process gets these and nothing else.
    #[prost(string, repeated, tag = "3")]
    pub env: Vec<String>,
    /// Working directory inside the image (empty: `/`).
    #[prost(string, tag = "4")]
    pub cwd: String,
    /// User: a number or a name from the image's `/etc/passwd` (empty: root).
    #[prost(string, tag = "5")]
    pub user: String,
    /// Group: a number or a name from the image's `/etc/group` (empty: the user's primary group).
    #[prost(string, tag = "6")]
    pub group: String,
    /// Give the process a stdin pipe (otherwise stdin is `/dev/null`).
    #[prost(bool, tag = "7")]
    pub stdin: bool,
}

/// A signal for a process.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KillProcess {
    /// The pid from [`Started`].
    #[prost(uint64, tag = "1")]
    pub pid: u64,
    /// Signal number.
    #[prost(int32, tag = "2")]
    pub signal: i32,
}

/// A virtio-fs mount.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountVolume {
    /// The virtio-fs tag.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Absolute path inside the image root; created when missing.
    #[prost(string, tag = "2")]
    pub path: String,
}

/// A `ram` volume: a tmpfs of `size` bytes at `path`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountRam {
    /// Absolute path inside the image root (not `/`); created when missing.
    #[prost(string, tag = "1")]
    pub path: String,
    /// Size limit in bytes (at least one page).
    #[prost(uint64, tag = "2")]
    pub size: u64,
}

/// A `storage` volume: the ext4 file system on the disk with virtio serial `serial`, at `path`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountDisk {
    /// The disk's virtio serial.
    #[prost(string, tag = "1")]
    pub serial: String,
    /// Absolute path inside the image root (not `/`); created when missing.
    #[prost(string, tag = "2")]
    pub path: String,
    /// ext4's reaction to a file-system error: `continue`, `remount-ro` or `panic` (empty: the
    /// file system's own setting).
    #[prost(string, tag = "3")]
    pub errors: String,
}

/// One network card's configuration, and what the image's name files gain. The card is up
/// with these addresses, this MTU and these routes once this is answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigureNetwork {
    /// The card's MAC address (6 bytes): the host chose it, and names the card by it.
    #[prost(bytes = "vec", tag = "1")]
    pub mac: Vec<u8>,
    /// The card's MTU.
    #[prost(uint32, tag = "2")]
    pub mtu: u32,
    /// Addresses to add, with their prefix lengths.
    #[prost(message, repeated, tag = "3")]
    pub addresses: Vec<IpPrefix>,
    /// Routes to add through this card.
    #[prost(message, repeated, tag = "4")]
    pub routes: Vec<Route>,
    /// Lines for `/etc/hosts`.
    #[prost(message, repeated, tag = "5")]
    pub hosts: Vec<HostEntry>,
    /// Name servers: when there are any, `/etc/resolv.conf` is replaced with them.
    #[prost(string, repeated, tag = "6")]
    pub nameservers: Vec<String>,
}

/// An IPv4 or IPv6 address and a prefix length.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IpPrefix {
    /// The address, in its usual text form.
    #[prost(string, tag = "1")]
    pub addr: String,
    /// The prefix length (at most 32 for IPv4, 128 for IPv6).
    #[prost(uint32, tag = "2")]
    pub prefix: u32,
}

/// A route through a gateway.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Route {
    /// The destination (prefix 0: the default route).
    #[prost(message, optional, tag = "1")]
    pub dest: Option<IpPrefix>,
    /// The gateway's address.
    #[prost(string, tag = "2")]
    pub gateway: String,
    /// The route's metric (0: the kernel's default).
    #[prost(uint32, tag = "3")]
    pub metric: u32,
}

/// One `/etc/hosts` line.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HostEntry {
    /// The address.
    #[prost(string, tag = "1")]
    pub ip: String,
    /// The name.
    #[prost(string, tag = "2")]
    pub name: String,
}

/// Bytes for a process's stdin.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteStdin {
    /// The pid from [`Started`].
    #[prost(uint64, tag = "1")]
    pub pid: u64,
    /// Bytes to write.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
    /// Close stdin after writing.
    #[prost(bool, tag = "3")]
    pub close: bool,
}

/// The guest's answer to one request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The outcome.
    #[prost(oneof = "response::Body", tags = "1, 2, 3, 4")]
    pub body: Option<response::Body>,
}

/// The kinds of answer.
pub mod response {
    /// One answer.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Done, nothing to report.
        #[prost(message, tag = "1")]
        Ok(super::Empty),
        /// The request failed.
        #[prost(message, tag = "2")]
        Error(super::Error),
        /// Handshake answer.
        #[prost(message, tag = "3")]
        Hello(super::Hello),
        /// A process started.
        #[prost(message, tag = "4")]
        Started(super::Started),
    }
}

/// A failed request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    /// The errno behind it, or 0.
    #[prost(int32, tag = "1")]
    pub errno: i32,
    /// What failed and where, e.g. `exec /bin/foo: No such file or directory`.
    #[prost(string, tag = "2")]
    pub message: String,
}

/// A process started.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Started {
    /// Its pid inside the guest.
    #[prost(uint64, tag = "1")]
    pub pid: u64,
}

/// Something the guest reports on its own.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Notification {
    /// What happened.
    #[prost(oneof = "notification::Body", tags = "1, 2")]
    pub body: Option<notification::Body>,
}

/// The kinds of notification.
pub mod notification {
    /// One notification.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// Output of a process.
        #[prost(message, tag = "1")]
        Output(super::Output),
        /// A process ended; every byte of its output was sent before this.
        #[prost(message, tag = "2")]
        Exited(super::Exited),
    }
}

/// A chunk of a process's output.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Output {
    /// The process.
    #[prost(uint64, tag = "1")]
    pub pid: u64,
    /// 1 for stdout, 2 for stderr.
    #[prost(uint32, tag = "2")]
    pub fd: u32,
    /// At most [`crate::MAX_OUTPUT_CHUNK`] bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

/// How a process ended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Exited {
    /// The process.
    #[prost(uint64, tag = "1")]
    pub pid: u64,
    /// Exit code, when it exited.
    #[prost(int32, optional, tag = "2")]
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    #[prost(int32, optional, tag = "3")]
    pub signal: Option<i32>,
}
