//! Serving the runtime API: requests are read and handled concurrently (a request the guest
//! never answers cannot hold up `Shutdown` or the end of stdin), and every response and event
//! goes out through one writer task, whole and in the order it was queued. `Shutdown` is not
//! handled here: [`serve`] returns it to the caller, which tears everything down and only then
//! writes the reply ([`Outbox::reply_shutdown`]).

use std::future::Future;
use std::rc::Rc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::codec::{encode_response_into, ApiDecodeError, RequestDecoder};
use super::proto::{request, response, Request, Response};

/// Requests handled at once; past it, the input is not read until one is done.
pub const MAX_IN_FLIGHT: usize = 64;
/// Responses and events waiting for the writer (then events wait: backpressure to the guest).
const OUTBOX: usize = 16;
/// The writer's buffer: a few output chunks.
const WRITE_BUFFER: usize = 256 * 1024;

/// An error reply.
pub fn error(code: response::ErrorCode, message: impl std::fmt::Display) -> response::Error {
    let mut e = response::Error {
        message: message.to_string(),
        ..Default::default()
    };
    e.set_code(code);
    e
}

/// What the runtime does for each request but `Shutdown`.
pub trait Handler {
    /// `Hello`: the runtime's version.
    fn hello(&self, version: String) -> impl Future<Output = Result<String, response::Error>>;
    /// `RunProcess`: the new process's pid.
    fn run(&self, run: request::RunProcess) -> impl Future<Output = Result<u64, response::Error>>;
    /// `KillProcess`.
    fn kill(&self, kill: request::KillProcess)
        -> impl Future<Output = Result<(), response::Error>>;
    /// `CreateNetwork`.
    fn create_network(
        &self,
        network: request::CreateNetwork,
    ) -> impl Future<Output = Result<response::CreateNetwork, response::Error>>;
}

/// The queue to the writer: responses and events.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Response>,
}

/// The writer is gone (the runtime API's output is closed).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the runtime API's output is closed")]
pub struct OutboxClosed;

impl Outbox {
    /// An outbox and the receiving end for [`write_all`].
    pub fn new() -> (Self, mpsc::Receiver<Response>) {
        let (tx, rx) = mpsc::channel(OUTBOX);
        (Self { tx }, rx)
    }

    async fn send(&self, r: Response) -> Result<(), OutboxClosed> {
        self.tx.send(r).await.map_err(|_| OutboxClosed)
    }

    /// Queues a `ProcessStatus` event (waits while the writer is behind).
    pub async fn process_status(&self, s: response::ProcessStatus) -> Result<(), OutboxClosed> {
        self.send(Response {
            event: true,
            id: 0,
            command: Some(response::Command::Status(s)),
        })
        .await
    }

    async fn reply(&self, id: u64, command: response::Command) -> Result<(), OutboxClosed> {
        self.send(Response {
            event: false,
            id,
            command: Some(command),
        })
        .await
    }

    /// Queues the reply to `Shutdown` request `id`.
    pub async fn reply_shutdown(&self, id: u64) -> Result<(), OutboxClosed> {
        self.reply(id, response::Command::Shutdown(response::Shutdown {}))
            .await
    }
}

/// Writes what the outbox receives until every sender is gone (then flushes and returns), or
/// until a write fails.
pub async fn write_all(
    out: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Response>,
) -> std::io::Result<()> {
    // Under a flood several events go out in one write; the buffer is flushed as soon as the
    // queue is empty, so a quiet process's last line is never held back.
    let mut out = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, out);
    let mut frame = Vec::new();
    while let Some(r) = rx.recv().await {
        frame.clear();
        encode_response_into(&r, &mut frame);
        out.write_all(&frame).await?;
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await
}

/// Why serving requests ended.
#[derive(Debug)]
pub enum Ending {
    /// The input ended between requests.
    InputClosed,
    /// `Shutdown` arrived (with this request id); no request after it was read.
    Shutdown(u64),
    /// The input is not the runtime API.
    Corrupt(ApiDecodeError),
    /// Reading the input failed.
    ReadFailed(std::io::Error),
}

/// Handles one request and queues its reply.
async fn answer(handler: &impl Handler, id: u64, command: request::Command, out: &Outbox) {
    use response::Command as R;
    let result = match command {
        request::Command::Hello(h) => handler
            .hello(h.version)
            .await
            .map(|version| R::Hello(response::Hello { version })),
        request::Command::Run(r) => handler
            .run(r)
            .await
            .map(|pid| R::Run(response::RunProcess { pid })),
        request::Command::Kill(k) => handler
            .kill(k)
            .await
            .map(|()| R::Kill(response::KillProcess {})),
        request::Command::Network(n) => handler.create_network(n).await.map(R::Network),
        // Taken by serve before it gets here.
        request::Command::Shutdown(_) => return,
    };
    let _ = out
        .reply(id, result.unwrap_or_else(response::Command::Error))
        .await;
}

/// Reads requests from `input` and answers them through `out` until the input ends, breaks, or
/// brings `Shutdown`. Requests still being handled then are dropped with the returned future.
pub async fn serve<H: Handler + 'static>(
    mut input: impl AsyncRead + Unpin,
    handler: Rc<H>,
    out: Outbox,
) -> Ending {
    let mut decoder = RequestDecoder::new();
    let mut in_flight = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        loop {
            let Request { id, command } = match decoder.next_request() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return Ending::Corrupt(e),
            };
            match command {
                Some(request::Command::Shutdown(_)) => return Ending::Shutdown(id),
                Some(command) => {
                    let (handler, out) = (handler.clone(), out.clone());
                    in_flight
                        .spawn_local(async move { answer(&*handler, id, command, &out).await });
                }
                None => {
                    let e = error(
                        response::ErrorCode::BadRequest,
                        format!("request {id} has no command"),
                    );
                    let _ = out.reply(id, response::Command::Error(e)).await;
                }
            }
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        while in_flight.try_join_next().is_some() {}
        let want = buf.len().min(decoder.room());
        let read = tokio::select! {
            read = input.read(&mut buf[..want]) => read,
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => continue,
        };
        match read {
            Ok(0) => {
                return match decoder.finish() {
                    Ok(()) => Ending::InputClosed,
                    Err(e) => Ending::Corrupt(e),
                }
            }
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) => return Ending::ReadFailed(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_api::Message;
    use std::cell::RefCell;

    /// Runs anything but `sleep-forever`, which never returns.
    #[derive(Default)]
    struct Fake {
        started: RefCell<Vec<String>>,
    }

    impl Handler for Fake {
        async fn hello(&self, version: String) -> Result<String, response::Error> {
            Ok(format!("hi {version}"))
        }
        async fn run(&self, run: request::RunProcess) -> Result<u64, response::Error> {
            if run.bin == "sleep-forever" {
                std::future::pending::<()>().await;
            }
            self.started.borrow_mut().push(run.bin);
            Ok(7)
        }
        async fn kill(&self, _: request::KillProcess) -> Result<(), response::Error> {
            Err(error(response::ErrorCode::NotFound, "no such process"))
        }
        async fn create_network(
            &self,
            _: request::CreateNetwork,
        ) -> Result<response::CreateNetwork, response::Error> {
            Err(error(response::ErrorCode::BadRequest, "no"))
        }
    }

    fn req(id: u64, command: Option<request::Command>) -> Vec<u8> {
        Request { id, command }.encode_length_delimited_to_vec()
    }

    fn run(bin: &str) -> Option<request::Command> {
        Some(request::Command::Run(request::RunProcess {
            bin: bin.into(),
            ..Default::default()
        }))
    }

    /// Serves `input`; returns the ending and every response written.
    async fn serve_bytes(input: Vec<u8>) -> (Ending, Vec<Response>) {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let (out, rx) = Outbox::new();
                let (w, mut r) = tokio::io::duplex(1 << 20);
                let writer = tokio::spawn(write_all(w, rx));
                let ending = serve(&input[..], Rc::new(Fake::default()), out).await;
                writer.await.unwrap().unwrap();
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).await.unwrap();
                let mut got = Vec::new();
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    got.push(Response::decode_length_delimited(&mut rest).unwrap());
                }
                (ending, got)
            })
            .await
    }

    #[tokio::test]
    async fn a_stuck_request_holds_up_neither_others_nor_shutdown() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let (out, rx) = Outbox::new();
                let (mut client, server_in) = tokio::io::duplex(1 << 16);
                let (w, mut r) = tokio::io::duplex(1 << 16);
                tokio::spawn(write_all(w, rx));
                let serving =
                    tokio::task::spawn_local(serve(server_in, Rc::new(Fake::default()), out));
                let mut input = req(1, run("sleep-forever"));
                input.extend(req(2, run("/bin/true")));
                input.extend(req(3, None));
                client.write_all(&input).await.unwrap();
                let mut got: Vec<Response> = Vec::new();
                let mut bytes = Vec::new();
                while got.len() < 2 {
                    let mut chunk = [0u8; 256];
                    let n = r.read(&mut chunk).await.unwrap();
                    bytes.extend_from_slice(&chunk[..n]);
                    let mut rest = &bytes[..];
                    got.clear();
                    while let Ok(resp) = Response::decode_length_delimited(&mut rest) {
                        got.push(resp);
                    }
                }
                let mut ids: Vec<u64> = got.iter().map(|r| r.id).collect();
                ids.sort();
                assert_eq!(ids, [2, 3], "{got:?}");
                for resp in &got {
                    match (resp.id, &resp.command) {
                        (2, Some(response::Command::Run(response::RunProcess { pid: 7 }))) => {}
                        (3, Some(response::Command::Error(e)))
                            if e.message == "request 3 has no command" => {}
                        other => panic!("{other:?}"),
                    }
                }
                let mut input = req(4, Some(request::Command::Shutdown(request::Shutdown {})));
                input.extend(req(5, run("/never/read")));
                client.write_all(&input).await.unwrap();
                let ending = serving.await.unwrap();
                assert!(matches!(ending, Ending::Shutdown(4)), "{ending:?}");
            })
            .await;
    }

    #[tokio::test]
    async fn the_input_ending_or_breaking_is_reported() {
        let (ending, _) = serve_bytes(req(1, run("/bin/true"))).await;
        assert!(matches!(ending, Ending::InputClosed), "{ending:?}");
        let (ending, _) = serve_bytes(vec![0xff; 64]).await;
        assert!(
            matches!(ending, Ending::Corrupt(ApiDecodeError::BadLength)),
            "{ending:?}"
        );
        let mut cut = req(1, run("/bin/true"));
        cut.pop();
        let (ending, _) = serve_bytes(cut).await;
        assert!(
            matches!(ending, Ending::Corrupt(ApiDecodeError::Truncated(_))),
            "{ending:?}"
        );
    }

    #[tokio::test]
    async fn a_closed_output_is_an_error() {
        let (out, rx) = Outbox::new();
        let (w, r) = tokio::io::duplex(16);
        drop(r);
        let writer = tokio::spawn(write_all(w, rx));
        let _ = out
            .process_status(response::ProcessStatus {
                pid: 1,
                running: true,
                stdout: vec![b'x'; 1024],
                ..Default::default()
            })
            .await;
        assert!(writer.await.unwrap().is_err());
    }
}
