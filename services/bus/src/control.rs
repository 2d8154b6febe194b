//! The embedded daemon's control socket: how `tes rotate`, `sign`, `bump`
//! … reach a `tes daemon` running on the same data directory without NATS,
//! as the `docker` and `vault` CLIs reach theirs.
//!
//! A Unix socket in the data directory (`DIR/control.sock`, mode 0600: only
//! the owner of the data directory, who could open the ledger anyway). It
//! carries requests only: one per connection, a command subject
//! (`tes.cmd.…`) and its payload in, the actor's reply out, relayed over the
//! daemon's in-process bus. [`ControlBus`] is the client side, a [`Bus`]
//! whose `request` goes through the socket, so the typed calls work on it
//! unchanged.
//!
//! Frame: a header (JSON: subject or error, and the message headers) and a
//! payload, each preceded by its length as a big-endian u32.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::{Bus, BusError, Headers, Message, Subscription};

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "control.sock";

/// Frames larger than this are refused (a signing payload is far smaller).
const MAX_FRAME: u32 = 16 * 1024 * 1024;

/// How long a relayed request may take (an archive pass is long; the
/// client's own timeout is what a person waits for).
const RELAY_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the control socket of the data directory `dir` is.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// The command subject (requests), empty in replies.
    subject: String,
    headers: Headers,
    /// Why there is no reply (replies only).
    #[serde(default)]
    error: Option<Refusal>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Refusal {
    NoResponders(String),
    Timeout(String, Duration),
    NotACommand(String),
    Other(String),
}

async fn write_frame(s: &mut UnixStream, header: &Header, payload: &[u8]) -> std::io::Result<()> {
    let header = serde_json::to_vec(header).expect("a header serializes");
    for part in [&header[..], payload] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        s.write_all(&len.to_be_bytes()).await?;
        s.write_all(part).await?;
    }
    s.flush().await
}

async fn read_part(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await?;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a control frame of {len} bytes is over the limit"),
        ));
    }
    let mut buf = vec![0; len as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn read_frame(s: &mut UnixStream) -> std::io::Result<(Header, Vec<u8>)> {
    let header = read_part(s).await?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let payload = read_part(s).await?;
    Ok((header, payload))
}

/// The daemon's side: relays each request to `bus`. The socket file goes
/// when the server is stopped.
pub struct ControlServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlServer {
    /// Listens on `path` (owner-only). A socket file left by a daemon that
    /// died is replaced; one a live daemon answers on is not.
    pub async fn start(path: &Path, bus: Arc<dyn Bus>) -> Result<ControlServer, BusError> {
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(BusError::Transport(format!(
                    "another daemon answers on {}",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            BusError::Transport(format!("cannot listen on {}: {e}", path.display()))
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| BusError::Transport(format!("cannot restrict {}: {e}", path.display())))?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let bus = bus.clone();
                tokio::spawn(async move { relay(stream, &*bus).await });
            }
        });
        Ok(ControlServer {
            path: path.to_path_buf(),
            task,
        })
    }

    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn relay(mut stream: UnixStream, bus: &dyn Bus) {
    let Ok((header, payload)) = read_frame(&mut stream).await else {
        return;
    };
    let reply = if !header.subject.starts_with("tes.cmd.") {
        Err(Refusal::NotACommand(header.subject.clone()))
    } else {
        let mut message = Message::new(header.subject, payload);
        message.headers = header.headers;
        bus.request(message, RELAY_TIMEOUT)
            .await
            .map_err(|e| match e {
                BusError::NoResponders(s) => Refusal::NoResponders(s),
                BusError::TimedOut { subject, after } => Refusal::Timeout(subject, after),
                other => Refusal::Other(other.to_string()),
            })
    };
    let (header, payload) = match reply {
        Ok(m) => (
            Header {
                subject: String::new(),
                headers: m.headers,
                error: None,
            },
            m.payload.to_vec(),
        ),
        Err(refusal) => (
            Header {
                subject: String::new(),
                headers: Headers::new(),
                error: Some(refusal),
            },
            Vec::new(),
        ),
    };
    let _ = write_frame(&mut stream, &header, &payload).await;
}

/// The client's side: requests through a daemon's control socket.
#[derive(Debug, Clone)]
pub struct ControlBus {
    path: PathBuf,
}

impl ControlBus {
    /// The daemon on `path`, if one answers there now.
    pub async fn connect(path: &Path) -> Option<ControlBus> {
        UnixStream::connect(path).await.ok()?;
        Some(ControlBus {
            path: path.to_path_buf(),
        })
    }
}

#[async_trait]
impl Bus for ControlBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        Err(BusError::Transport(format!(
            "the control socket carries requests only, not a publish on {}",
            message.subject
        )))
    }

    async fn subscribe(&self, pattern: &str, _: Option<&str>) -> Result<Subscription, BusError> {
        Err(BusError::Transport(format!(
            "the control socket carries requests only, not a subscription to {pattern}"
        )))
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError> {
        let subject = message.subject.clone();
        let exchange = async {
            let mut stream = UnixStream::connect(&self.path).await?;
            let header = Header {
                subject: message.subject,
                headers: message.headers,
                error: None,
            };
            write_frame(&mut stream, &header, &message.payload).await?;
            read_frame(&mut stream).await
        };
        let (header, payload) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| BusError::TimedOut {
                subject: subject.clone(),
                after: timeout,
            })?
            .map_err(|e| {
                BusError::Transport(format!(
                    "the daemon's control socket {}: {e}",
                    self.path.display()
                ))
            })?;
        match header.error {
            None => {
                let mut reply = Message::new(subject, payload);
                reply.headers = header.headers;
                Ok(reply)
            }
            Some(Refusal::NoResponders(s)) => Err(BusError::NoResponders(s)),
            Some(Refusal::Timeout(subject, after)) => Err(BusError::TimedOut { subject, after }),
            Some(Refusal::NotACommand(s)) => Err(BusError::InvalidSubject(s)),
            Some(Refusal::Other(e)) => Err(BusError::Transport(e)),
        }
    }
}
