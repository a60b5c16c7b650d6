//! One HTTP download into a partial file: streamed through the hasher, resumed with `Range`
//! (guarded by `If-Range`) after an interruption, and retried with backoff on transient failures.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{self, HeaderMap};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::digest::{Digest, HashAlgo};
use crate::error::LoadError;
use crate::progress::Progress;
use crate::sink::Sink;

/// Requests that fail without moving the download forward before it gives up.
const MAX_FAILURES_WITHOUT_PROGRESS: u32 = 5;
/// Requests in all before it gives up, progress or not.
const MAX_ATTEMPTS: u32 = 50;
/// First retry delay; doubled per failure without progress.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What identifies one version of a remote file: a strong `ETag` or else `Last-Modified`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Validator {
    /// A strong entity tag, quotes included.
    Etag(String),
    /// An HTTP date.
    LastModified(String),
}

impl Validator {
    fn from_headers(h: &HeaderMap) -> Option<Self> {
        let text = |name| {
            h.get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        text(header::ETAG)
            .filter(|t| !t.starts_with("W/"))
            .map(Validator::Etag)
            .or_else(|| text(header::LAST_MODIFIED).map(Validator::LastModified))
    }

    fn value(&self) -> &str {
        match self {
            Validator::Etag(v) | Validator::LastModified(v) => v,
        }
    }
}

/// What to download and where.
pub(crate) struct Request<'a> {
    pub client: &'a reqwest::Client,
    pub url: &'a Url,
    /// The partial file.
    pub dest: &'a Path,
    pub algo: HashAlgo,
    /// Keep bytes already in `dest` and ask only for the rest.
    pub resume: bool,
    /// Ask the server to answer 304 when this version is still current.
    pub if_changed: Option<&'a Validator>,
    /// The most bytes the file may have; a server that announces or sends more is refused.
    pub max_bytes: u64,
}

/// How a download ended.
pub(crate) enum Outcome {
    /// `if_changed` is still the current version; nothing was written.
    NotModified,
    /// `dest` holds the complete file.
    Complete {
        digest: Digest,
        validator: Option<Validator>,
    },
}

enum Failure {
    Transient(String),
    Fatal(LoadError),
    SinkStopped,
}

impl Request<'_> {
    /// Runs the download to completion or to a final error.
    pub async fn run(&self) -> Result<Outcome, LoadError> {
        let sink = Sink::start(self.dest, self.algo, self.resume)
            .map_err(|e| LoadError::io(format!("cannot open {}", self.dest.display()), e))?;
        let mut state = State {
            offset: sink.start_offset,
            validator: None,
            progress: Progress::start(self.url.path().rsplit('/').next().unwrap_or("package")),
        };
        if state.offset > 0 {
            tracing::info!("resuming download of {} at byte {}", self.url, state.offset);
        }
        let mut attempts = 0;
        let mut failures = 0;
        let result = loop {
            attempts += 1;
            let before = state.offset;
            match self.attempt(&sink, &mut state, attempts == 1).await {
                Ok(done) => break Ok(done),
                Err(Failure::Fatal(e)) => break Err(e),
                Err(Failure::SinkStopped) => {
                    break Err(LoadError::io(
                        "download writer",
                        std::io::Error::other("stopped"),
                    ))
                }
                Err(Failure::Transient(why)) => {
                    failures = if state.offset > before {
                        1
                    } else {
                        failures + 1
                    };
                    if failures >= MAX_FAILURES_WITHOUT_PROGRESS || attempts >= MAX_ATTEMPTS {
                        break Err(LoadError::GaveUp {
                            url: self.url.to_string(),
                            attempts,
                            last: why,
                        });
                    }
                    let delay = FIRST_BACKOFF
                        .saturating_mul(1 << (failures - 1).min(10))
                        .min(MAX_BACKOFF);
                    tracing::warn!(
                        "download of {} interrupted at byte {} ({why}); retrying in {delay:?}",
                        self.url,
                        state.offset
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        };
        state.progress.finish();
        let written = sink.finish().await;
        match result {
            Ok(false) => Ok(Outcome::NotModified),
            Ok(true) => {
                let w = written.map_err(|e| LoadError::io("download", e))?;
                tracing::debug!("{}: {} bytes, {}", self.url, w.len, w.digest);
                Ok(Outcome::Complete {
                    digest: w.digest,
                    validator: state.validator,
                })
            }
            // Never resumable under this limit: what was written is of no use.
            Err(e @ LoadError::TooLarge { .. }) => {
                let _ = std::fs::remove_file(self.dest);
                Err(e)
            }
            // A writer error is the root cause when the writer stopped.
            Err(e) => Err(match written {
                Err(w) => LoadError::io("download", w),
                Ok(_) => e,
            }),
        }
    }

    fn too_large(&self) -> LoadError {
        LoadError::TooLarge {
            url: self.url.to_string(),
            limit: self.max_bytes,
        }
    }

    /// One request. `Ok(true)` when the file is complete, `Ok(false)` on 304.
    async fn attempt(&self, sink: &Sink, st: &mut State, first: bool) -> Result<bool, Failure> {
        let mut req = self.client.get(self.url.clone());
        if st.offset > 0 {
            req = req.header(header::RANGE, format!("bytes={}-", st.offset));
            if let Some(v) = &st.validator {
                req = req.header(header::IF_RANGE, v.value());
            }
        } else if let (true, Some(v)) = (first, self.if_changed) {
            req = match v {
                Validator::Etag(t) => req.header(header::IF_NONE_MATCH, t),
                Validator::LastModified(d) => req.header(header::IF_MODIFIED_SINCE, d),
            };
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::Transient(error_chain(&e)))?;
        let status = resp.status();
        let total = match status {
            StatusCode::NOT_MODIFIED if first && self.if_changed.is_some() => return Ok(false),
            StatusCode::OK => {
                if st.offset > 0 {
                    tracing::info!("{} sent the whole file; restarting from byte 0", self.url);
                    sink.reset().await.map_err(|()| Failure::SinkStopped)?;
                    st.offset = 0;
                }
                resp.content_length()
            }
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                match range {
                    Some((start, total)) if start == st.offset => total,
                    _ => {
                        sink.reset().await.map_err(|()| Failure::SinkStopped)?;
                        st.offset = 0;
                        return Err(Failure::Transient(
                            "the server sent a range that was not asked for; restarting".into(),
                        ));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if st.offset > 0 => {
                sink.reset().await.map_err(|()| Failure::SinkStopped)?;
                st.offset = 0;
                return Err(Failure::Transient(
                    "the partial file does not fit the remote one; restarting".into(),
                ));
            }
            s if s.is_server_error()
                || s == StatusCode::REQUEST_TIMEOUT
                || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(Failure::Transient(format!("HTTP {s}")));
            }
            s => {
                return Err(Failure::Fatal(LoadError::HttpStatus {
                    url: self.url.to_string(),
                    status: s.to_string(),
                }))
            }
        };
        if let Some(v) = Validator::from_headers(resp.headers()) {
            st.validator = Some(v);
        }
        if total.is_some_and(|t| t > self.max_bytes) {
            return Err(Failure::Fatal(self.too_large()));
        }
        st.progress.set_total(total);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Failure::Transient(error_chain(&e)))?;
            let end = st.offset.saturating_add(chunk.len() as u64);
            if end > self.max_bytes {
                return Err(Failure::Fatal(self.too_large()));
            }
            if total.is_some_and(|t| end > t) {
                return Err(Failure::Fatal(LoadError::Protocol {
                    url: self.url.to_string(),
                    reason: format!(
                        "the server sent more than the {} bytes it announced",
                        total.unwrap_or(0)
                    ),
                }));
            }
            sink.write(chunk).await.map_err(|()| Failure::SinkStopped)?;
            st.offset = end;
            st.progress.update(end);
        }
        match total {
            Some(t) if st.offset < t => Err(Failure::Transient(format!(
                "connection closed after {} of {t} bytes",
                st.offset
            ))),
            _ => Ok(true),
        }
    }
}

struct State {
    offset: u64,
    validator: Option<Validator>,
    progress: Progress,
}

/// `bytes <start>-<end>/<total>` → `(start, Some(total))`; `*` as total gives `None`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some((start, total))
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes 5-9/9"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-9/10"), None);
        assert_eq!(parse_content_range("bytes x-9/10"), None);
        assert_eq!(parse_content_range("bytes */10"), None);
    }

    #[test]
    fn validator_prefers_strong_etag() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LAST_MODIFIED,
            "Mon, 23 Nov 2026 10:00:00 GMT".parse().unwrap(),
        );
        assert!(matches!(
            Validator::from_headers(&h),
            Some(Validator::LastModified(_))
        ));
        h.insert(header::ETAG, "W/\"weak\"".parse().unwrap());
        assert!(matches!(
            Validator::from_headers(&h),
            Some(Validator::LastModified(_))
        ));
        h.insert(header::ETAG, "\"strong\"".parse().unwrap());
        assert_eq!(
            Validator::from_headers(&h),
            Some(Validator::Etag("\"strong\"".into()))
        );
    }
}
