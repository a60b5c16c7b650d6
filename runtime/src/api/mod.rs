//! The runtime API: yagna's exe-unit talks to the runtime over stdin/stdout in length-delimited
//! protobuf (the schema and generated types are ya-runtime-api 0.7.0's, the exe-unit's own). This
//! is the last step of the data flow: requests come in here and go to the running VM's agent;
//! the agent's events go out here as `ProcessStatus` events.
//!
//! - [`codec`]: the byte stream, bounded: a request larger than [`codec::MAX_REQUEST`], a length
//!   that is not a varint or a payload that is not the schema is a typed error, never a hang or
//!   a silent end.
//! - [`server`]: reads requests, handles them concurrently (a stuck one never blocks Shutdown),
//!   and writes responses and events through one writer, in order, with backpressure.
//! - [`stdio`]: stdin and stdout themselves, through the reactor when they are pipes.

pub mod codec;
pub mod server;
pub mod stdio;

pub use ya_runtime_api::server::proto;
