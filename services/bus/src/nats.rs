//! The bus on a NATS server (2.10 or newer), with the same semantics as the
//! in-process bus: core NATS publish/subscribe, queue groups, and
//! request/reply where "no responders" means the actor is down.

use std::time::Duration;

use async_nats::{ConnectOptions, HeaderMap};
use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};

use crate::subject::{validate_pattern, validate_subject};
use crate::{Bus, BusError, Headers, Message, Subscription};

/// Messages a subscription buffers before the reader falls behind (the
/// server then counts it a slow consumer).
const SUBSCRIPTION_BUFFER: usize = 65_536;

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    /// The server's error messages. A forbidden publish returns Ok at the
    /// client; the refusal arrives only here, asynchronously.
    server_errors: broadcast::Sender<String>,
}

/// How to reach the server. Credentials may also be in the URL
/// (`nats://user:password@host:4222`).
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Shown in the server's connection list (`tes-0x6001`, `tes-cli`).
    pub name: String,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl NatsBus {
    /// Connects, failing fast when no server answers (a CLI should say so,
    /// not hang); once connected the client reconnects forever.
    pub async fn connect(config: &NatsConfig) -> Result<NatsBus, BusError> {
        let (server_errors, _) = broadcast::channel(64);
        let errors = server_errors.clone();
        let mut options = ConnectOptions::new()
            // Once connected, reconnect forever (logged as it happens).
            .max_reconnects(None)
            .name(&config.name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(move |event| {
                let errors = errors.clone();
                async move {
                    match event {
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting")
                        }
                        async_nats::Event::Connected => tracing::info!("NATS connected"),
                        async_nats::Event::ServerError(e) => {
                            tracing::error!(error = %e, "NATS server error");
                            let _ = errors.send(e.to_string());
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            });
        // A cluster is given as its members' URLs, comma-separated; the
        // client connects to one and fails over to the others (and to the
        // members the servers announce). async-nats 0.51 parses
        // `user:password@` in a URL but never sends it: take the
        // credentials out and pass them explicitly.
        let mut servers = Vec::new();
        let mut from_url = None;
        for one in config
            .url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let (url, credentials) = split_credentials(one);
            let addr: async_nats::ServerAddr = url
                .parse()
                .map_err(|e| BusError::Transport(format!("bad NATS URL {}: {e}", redact(one))))?;
            servers.push(addr);
            from_url = from_url.or(credentials);
        }
        let credentials = match (&config.user, &config.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => from_url,
        };
        if let Some((user, password)) = credentials {
            options = options.user_and_password(user, password);
        }
        let client = options.connect(servers).await.map_err(|e| {
            BusError::Transport(format!(
                "cannot connect to NATS at {}: {e}",
                redact(&config.url)
            ))
        })?;
        Ok(NatsBus {
            client,
            server_errors,
        })
    }

    /// The underlying client, for JetStream.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Resolves when the server refuses this client a publish to `subject`
    /// (a permissions violation). Create it before publishing: a refusal
    /// arrives asynchronously, after `publish` has returned Ok.
    pub fn refusal(&self, subject: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut errors = self.server_errors.subscribe();
        let forbidden = format!("Permissions Violation for Publish to \"{subject}\"");
        async move {
            loop {
                match errors.recv().await {
                    Ok(e) if e.contains(&forbidden) => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Transport(e.to_string()))
    }
}

/// `nats://user:password@host:4222` → (`nats://host:4222`, (user, password)),
/// percent-decoding both.
fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) else {
        return (url.to_string(), None);
    };
    if at < scheme {
        return (url.to_string(), None);
    }
    let userinfo = &url[scheme + 3..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let bare = format!("{}{}", &url[..scheme + 3], &url[at + 1..]);
    (bare, Some((percent_decode(user), percent_decode(password))))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            std::str::from_utf8(bytes.get(i + 1..i + 3)?)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        };
        match (bytes[i], hex()) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL fit for logs: without the password.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(redact_one)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn to_nats(headers: &Headers) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(k.as_str(), v.as_str());
    }
    map
}

/// A NATS message as a bus [`Message`].
pub fn from_nats(message: async_nats::Message) -> Message {
    let headers = message
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(name, values)| {
                    Some((name.to_string(), values.first()?.as_str().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        subject: message.subject.to_string(),
        reply: message.reply.map(|r| r.to_string()),
        headers,
        payload: message.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        validate_subject(&message.subject)?;
        let headers = to_nats(&message.headers);
        let result = match message.reply {
            Some(reply) => {
                self.client
                    .publish_with_reply_and_headers(
                        message.subject,
                        reply,
                        headers,
                        message.payload,
                    )
                    .await
            }
            None => {
                self.client
                    .publish_with_headers(message.subject, headers, message.payload)
                    .await
            }
        };
        result.map_err(|e| BusError::Transport(e.to_string()))
    }

    async fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, BusError> {
        validate_pattern(pattern)?;
        let subscribed = match queue {
            Some(q) => {
                self.client
                    .queue_subscribe(pattern.to_string(), q.to_string())
                    .await
            }
            None => self.client.subscribe(pattern.to_string()).await,
        };
        let mut subscriber = subscribed.map_err(|e| BusError::Transport(e.to_string()))?;
        // Make sure the server has the interest before we report success, so
        // a request sent right after does not meet "no responders".
        self.flush().await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    next = subscriber.next() => match next {
                        Some(m) => {
                            if tx.send(from_nats(m)).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    // Dropping the Subscription unsubscribes.
                    _ = tx.closed() => break,
                }
            }
            let _ = subscriber.unsubscribe().await;
        });
        Ok(Subscription::new(rx))
    }

    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError> {
        validate_subject(&message.subject)?;
        let subject = message.subject.clone();
        let request = async_nats::Request::new()
            .headers(to_nats(&message.headers))
            .payload(message.payload)
            .timeout(Some(timeout));
        let refused = self.refusal(&subject);
        let outcome = tokio::select! {
            outcome = self.client.send_request(message.subject, request) => outcome,
            () = refused => return Err(BusError::Forbidden(subject)),
        };
        match outcome {
            Ok(reply) => Ok(from_nats(reply)),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                async_nats::RequestErrorKind::TimedOut => BusError::TimedOut {
                    subject,
                    after: timeout,
                },
                async_nats::RequestErrorKind::InvalidSubject => BusError::InvalidSubject(subject),
                _ => BusError::Transport(e.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn takes_credentials_out_of_urls() {
        let (url, creds) = super::split_credentials("nats://ops:p%40ss%3Aw@127.0.0.1:4222");
        assert_eq!(url, "nats://127.0.0.1:4222");
        assert_eq!(creds, Some(("ops".into(), "p@ss:w".into())));
        assert_eq!(
            super::split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".into(), None)
        );
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            super::redact("nats://ops:s3cret@127.0.0.1:4222"),
            "nats://ops:***@127.0.0.1:4222"
        );
        assert_eq!(
            super::redact("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            super::redact("nats://a:pw@h1:4222,nats://a:pw@h2:4222"),
            "nats://a:***@h1:4222,nats://a:***@h2:4222"
        );
    }
}
