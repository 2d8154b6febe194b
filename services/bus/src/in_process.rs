//! The bus inside one process: the embedded default, where all actors run in
//! one `tes` without a NATS server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use crate::subject::{matches, validate_pattern, validate_subject};
use crate::{Bus, BusError, Message, Subscription};

/// Messages queued per subscriber before it counts as a slow consumer and
/// further messages to it are dropped (what a NATS server does too).
const SUBSCRIBER_CAPACITY: usize = 65_536;
/// Prefix of reply subjects made by [`Bus::request`].
const INBOX_PREFIX: &str = "_INBOX.";

#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    subs: Mutex<Vec<Sub>>,
    /// Requests waiting for their one reply, by inbox subject. A reply is a
    /// map lookup, not a scan of every subscription.
    waiting: Mutex<HashMap<String, oneshot::Sender<Message>>>,
    round_robin: AtomicUsize,
    next_inbox: AtomicU64,
}

struct Sub {
    pattern: String,
    queue: Option<String>,
    tx: mpsc::Sender<Message>,
}

impl InProcessBus {
    pub fn new() -> InProcessBus {
        InProcessBus::default()
    }

    /// Delivers to every matching plain subscriber and one member of each
    /// matching queue group; returns how many received it. The last
    /// receiver gets the message itself, the others a copy: most messages
    /// (a command, a reply) have one.
    fn deliver(&self, message: Message) -> usize {
        let targets: Vec<mpsc::Sender<Message>> = {
            let mut subs = self.inner.subs.lock().expect("bus lock poisoned");
            if subs.iter().any(|s| s.tx.is_closed()) {
                subs.retain(|s| !s.tx.is_closed());
            }
            let mut targets = Vec::new();
            let mut groups: Vec<(&str, Vec<&Sub>)> = Vec::new();
            for sub in subs
                .iter()
                .filter(|s| matches(&s.pattern, &message.subject))
            {
                match &sub.queue {
                    None => targets.push(sub.tx.clone()),
                    Some(q) => match groups.iter_mut().find(|(name, _)| name == q) {
                        Some((_, members)) => members.push(sub),
                        None => groups.push((q, vec![sub])),
                    },
                }
            }
            if !groups.is_empty() {
                let turn = self.inner.round_robin.fetch_add(1, Ordering::Relaxed);
                for (_, members) in groups {
                    targets.push(members[turn % members.len()].tx.clone());
                }
            }
            targets
        };
        let Some((last, others)) = targets.split_last() else {
            return 0;
        };
        let send = |tx: &mpsc::Sender<Message>, m: Message| match tx.try_send(m) {
            Ok(()) => 1,
            Err(mpsc::error::TrySendError::Full(dropped)) => {
                tracing::warn!(subject = %dropped.subject, "slow consumer: message dropped");
                0
            }
            Err(mpsc::error::TrySendError::Closed(_)) => 0,
        };
        let mut delivered = 0;
        for tx in others {
            delivered += send(tx, message.clone());
        }
        delivered += send(last, message);
        delivered
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, message: Message) -> Result<(), BusError> {
        validate_subject(&message.subject)?;
        if message.subject.starts_with(INBOX_PREFIX) {
            let waiter = self
                .inner
                .waiting
                .lock()
                .expect("bus lock poisoned")
                .remove(&message.subject);
            if let Some(waiter) = waiter {
                // The requester takes the reply; a subscriber to the inbox
                // (a `>` wildcard, rare) gets a copy.
                if self.has_interest(&message.subject) {
                    let _ = waiter.send(message.clone());
                } else {
                    let _ = waiter.send(message);
                    return Ok(());
                }
            }
        }
        self.deliver(message);
        Ok(())
    }

    async fn subscribe(
        &self,
        pattern: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, BusError> {
        validate_pattern(pattern)?;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        self.inner
            .subs
            .lock()
            .expect("bus lock poisoned")
            .push(Sub {
                pattern: pattern.to_string(),
                queue: queue.map(str::to_string),
                tx,
            });
        Ok(Subscription::new(rx))
    }

    fn has_interest(&self, subject: &str) -> bool {
        let subs = self.inner.subs.lock().expect("bus lock poisoned");
        subs.iter()
            .any(|s| !s.tx.is_closed() && matches(&s.pattern, subject))
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message, BusError> {
        validate_subject(&message.subject)?;
        // Unique within this bus, which is all an inbox must be here.
        let inbox = format!(
            "{INBOX_PREFIX}{}",
            self.inner.next_inbox.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiting
            .lock()
            .expect("bus lock poisoned")
            .insert(inbox.clone(), tx);
        let forget = || {
            self.inner
                .waiting
                .lock()
                .expect("bus lock poisoned")
                .remove(&inbox)
        };
        message.reply = Some(inbox.clone());
        let subject = message.subject.clone();
        if self.deliver(message) == 0 {
            forget();
            return Err(BusError::NoResponders(subject));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(BusError::Closed),
            Err(_) => {
                forget();
                Err(BusError::TimedOut {
                    subject,
                    after: timeout,
                })
            }
        }
    }
}
