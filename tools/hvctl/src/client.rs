//! The client end of the control protocol: one connection to dom0's UART socket, one request
//! at a time, each with a deadline.

use abi::proto::{
    self, DELIMITER, Error as ProtoError, FrameEncoder, FrameReader, PROTOCOL_VERSION, Req,
    Request, Resp, Response,
};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every way a command can fail; each prints as one line.
#[derive(Debug)]
pub enum Fail {
    /// The socket is not there or refuses connections.
    NoChannel(PathBuf, std::io::Error),
    /// dom0 did not answer in time.
    Timeout(Duration),
    /// The connection broke.
    Io(std::io::Error),
    /// dom0 sent something that is not a valid response.
    BadResponse(String),
    /// dom0 speaks another protocol version.
    VersionMismatch {
        /// dom0's.
        dom0: u16,
    },
    /// No domain with this name or id (with the hypercall's error when dom0 said so).
    UnknownDomain(String, Option<abi::Errno>),
    /// A hypercall failed.
    Hypercall(abi::Errno),
    /// dom0 refused the request for another reason.
    Dom0(String),
    /// The user asked for something impossible before anything was sent.
    Usage(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::NoChannel(p, e) => write!(
                f,
                "no control channel at {}: {e} (is `cargo xtask run` running? see --socket)",
                p.display()
            ),
            Fail::Timeout(t) => write!(
                f,
                "dom0 did not answer within {:.1} s (is it serving, and no other hvctl connected? see --timeout)",
                t.as_secs_f64()
            ),
            Fail::Io(e) => write!(f, "control channel: {e}"),
            Fail::BadResponse(why) => write!(f, "bad response from dom0: {why}"),
            Fail::VersionMismatch { dom0 } => write!(
                f,
                "protocol version mismatch: dom0 speaks {dom0}, hvctl speaks {PROTOCOL_VERSION}"
            ),
            Fail::UnknownDomain(d, None) => write!(f, "unknown domain {d:?}"),
            Fail::UnknownDomain(d, Some(e)) => {
                write!(f, "unknown domain {d:?} ({}: {})", e.name(), e.describe())
            }
            Fail::Hypercall(e) => write!(f, "{}: {}", e.name(), e.describe()),
            Fail::Dom0(why) => f.write_str(why),
            Fail::Usage(why) => f.write_str(why),
        }
    }
}

impl From<ProtoError<'_>> for Fail {
    fn from(e: ProtoError<'_>) -> Self {
        match e {
            ProtoError::Hypercall { errno } => Fail::Hypercall(errno),
            ProtoError::VersionMismatch { dom0, .. } => Fail::VersionMismatch { dom0 },
            // New requests are appended without a version change: an older dom0 says this.
            ProtoError::UnknownRequest { tag } => Fail::Dom0(format!(
                "dom0 does not know this request (tag {tag}): its dom0-agent predates it"
            )),
            other => Fail::Dom0(other.to_string()),
        }
    }
}

/// What dom0 said in the hello.
#[derive(Debug, Clone)]
pub struct Hello {
    /// dom0-agent's version.
    pub agent: String,
    /// microhv's ABI version.
    pub abi: (u16, u16),
    /// dom0's upload buffer.
    pub upload_capacity: u32,
}

/// A connection that has passed the hello.
pub struct Client {
    stream: UnixStream,
    reader: Box<FrameReader>,
    encoder: Box<FrameEncoder>,
    next_id: u32,
    timeout: Duration,
    /// Skip responses that name no request (id 0): true during the hello, when they answer
    /// whatever an earlier client left half-sent.
    skip_unattributed: bool,
    /// dom0's hello.
    pub hello: Hello,
}

impl Client {
    /// Connects to `path` and exchanges the hello; `timeout` bounds every request.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, Fail> {
        let stream = UnixStream::connect(path).map_err(|e| Fail::NoChannel(path.into(), e))?;
        stream.set_write_timeout(Some(timeout)).map_err(Fail::Io)?;
        // Ids start somewhere new each run, so that a late answer to an earlier client's
        // request is never mistaken for one of ours.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() ^ std::process::id().rotate_left(16));
        let mut c = Client {
            stream,
            reader: Box::new(FrameReader::new()),
            encoder: Box::new(FrameEncoder::new()),
            next_id: seed.max(1),
            timeout,
            skip_unattributed: true,
            hello: Hello { agent: String::new(), abi: (0, 0), upload_capacity: 0 },
        };
        // An empty frame first: it ends whatever an earlier client left half-sent.
        c.stream.write_all(&[DELIMITER]).map_err(Fail::Io)?;
        let hello = c.call(Req::Hello { version: PROTOCOL_VERSION }, |r| match r {
            Resp::Hello { version, abi_major, abi_minor, agent, upload_capacity } => Ok((
                version,
                Hello { agent: agent.into(), abi: (abi_major, abi_minor), upload_capacity },
            )),
            other => Err(unexpected(&other)),
        })?;
        if hello.0 != PROTOCOL_VERSION {
            return Err(Fail::VersionMismatch { dom0: hello.0 });
        }
        c.hello = hello.1;
        c.skip_unattributed = false;
        Ok(c)
    }

    /// The time each request may take (`--timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `body` and waits for its response, which `f` turns into a result (an error
    /// response becomes a [`Fail`] without reaching `f`).
    pub fn call<T>(
        &mut self,
        body: Req<'_>,
        f: impl FnOnce(Resp<'_>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        self.call_within(self.timeout, body, f)
    }

    /// [`Client::call`] for a request that may take `timeout` rather than the usual time.
    pub fn call_within<T>(
        &mut self,
        timeout: Duration,
        body: Req<'_>,
        f: impl FnOnce(Resp<'_>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let frame = self
            .encoder
            .encode(&Request { id, body })
            .map_err(|_| Fail::Usage("request too large for one frame".into()))?;
        self.stream.write_all(frame).map_err(|e| self.io(e, self.timeout))?;
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fail::Timeout(timeout));
            }
            self.stream.set_read_timeout(Some(left)).map_err(Fail::Io)?;
            let n = match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(Fail::Io(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "dom0's side closed the connection",
                    )));
                }
                Ok(n) => n,
                Err(e) => return Err(self.io(e, timeout)),
            };
            // The rest of `buf` is never needed once a response is found: requests go one
            // at a time, so nothing follows our answer.
            for &b in &buf[..n] {
                let Some(frame) = self.reader.push(b) else { continue };
                let msg = match frame {
                    Ok(m) => m,
                    Err(e) => return Err(Fail::BadResponse(format!("{e:?}"))),
                };
                let resp: Response<'_> =
                    proto::decode_response(msg).map_err(|m| Fail::BadResponse(m.to_string()))?;
                match resp.id {
                    x if x == id => {}
                    proto::NO_ID if self.skip_unattributed => continue,
                    // dom0 could not read our frame (it was damaged on the way).
                    proto::NO_ID => return Err(resp_err(resp.body)),
                    // A late answer to an earlier client: not ours.
                    _ => continue,
                }
                return match resp.body {
                    Resp::Error(e) => Err(e.into()),
                    other => f(other),
                };
            }
        }
    }

    fn io(&self, e: std::io::Error, timeout: Duration) -> Fail {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            Fail::Timeout(timeout)
        } else {
            Fail::Io(e)
        }
    }
}

fn resp_err(body: Resp<'_>) -> Fail {
    match body {
        Resp::Error(e) => Fail::Dom0(format!("dom0 could not read the request: {e}")),
        other => unexpected(&other),
    }
}

/// A response of the wrong kind for the request.
pub fn unexpected(r: &Resp<'_>) -> Fail {
    Fail::BadResponse(format!("unexpected response {r:?}"))
}
