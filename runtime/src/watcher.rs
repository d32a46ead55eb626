//! [`watcher()`]: list, then watch from the list's revision; resume from the last revision
//! seen when a watch ends; list again when the server says that revision is gone (410);
//! back off on errors. Its events say what changed, or that the whole set was re-read.

use std::time::Duration;

use keel_client::{Api, ClientError, ListParams, WatchEvent, WatchParams, api::TypedWatch};
use serde_json::Value;

use super::object::ObjectExt;

/// What a watcher looks at.
#[derive(Debug, Clone)]
pub struct Config {
    /// Only objects with these labels.
    pub label_selector: Option<String>,
    /// Only objects with these fields (`status.nodeName=n1`).
    pub field_selector: Option<String>,
    /// Objects per page of a list.
    pub page_size: u32,
    /// Seconds the server keeps one watch open before the watcher resumes with a new one.
    pub timeout_seconds: u32,
    /// The first pause after an error; it doubles up to [`Config::max_backoff`].
    pub backoff: Duration,
    /// The longest pause after errors.
    pub max_backoff: Duration,
}

/// What a watcher saw.
#[derive(Debug, Clone)]
pub enum Event {
    /// The whole set was (re)listed: these are all the objects now.
    Restarted(Vec<Value>),
    /// An object was added or changed.
    Applied(Value),
    /// An object was deleted, or left the selection (its last state).
    Deleted(Value),
}

/// A list-then-watch loop over one kind. Step it with [`Watcher::next`].
pub struct Watcher {
    api: Api<Value>,
    config: Config,
    state: State,
    pause: Duration,
    relists: u64,
}

/// Where a watcher is.
enum State {
    /// Nothing known: list next.
    Empty,
    /// Listed or watched up to `revision`; start a watch from there next.
    Resume {
        /// The last revision seen.
        revision: String,
    },
    /// A watch is open.
    Watching {
        /// The last revision seen.
        revision: String,
        /// The open watch.
        watch: Box<TypedWatch<Value>>,
    },
}

/// A watcher of the objects `api` covers.
pub fn watcher(api: Api<Value>, config: Config) -> Watcher {
    let pause = config.backoff;
    Watcher {
        api,
        config,
        state: State::Empty,
        pause,
        relists: 0,
    }
}

// === impl Config ===

impl Default for Config {
    fn default() -> Config {
        Config {
            label_selector: None,
            field_selector: None,
            page_size: 500,
            timeout_seconds: 290,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// This config, selecting on fields too.
    pub fn fields(mut self, selector: &str) -> Config {
        self.field_selector = Some(selector.to_string());
        self
    }

    /// This config, selecting on labels too.
    pub fn labels(mut self, selector: &str) -> Config {
        self.label_selector = Some(selector.to_string());
        self
    }
}

// === impl Watcher ===

impl Watcher {
    /// The next event. Errors are logged and retried with backoff; this only returns events.
    pub async fn next(&mut self) -> Event {
        loop {
            match self.step().await {
                Ok(Some(event)) => {
                    self.pause = self.config.backoff;
                    return event;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(kind = self.api.kind().kind, error = %e, "watch failed, retrying");
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// How many times the watcher listed (the first list included).
    pub fn relists(&self) -> u64 {
        self.relists
    }

    /// One step of the state machine: maybe an event, or an error to back off from.
    async fn step(&mut self) -> Result<Option<Event>, ClientError> {
        match std::mem::replace(&mut self.state, State::Empty) {
            State::Empty => {
                let params = ListParams {
                    label_selector: self.config.label_selector.clone(),
                    field_selector: self.config.field_selector.clone(),
                    limit: self.config.page_size,
                };
                let list = self.api.list(&params).await?;
                self.relists += 1;
                self.state = State::Resume {
                    revision: list.resource_version,
                };
                Ok(Some(Event::Restarted(list.items)))
            }
            State::Resume { revision } => {
                let params = WatchParams {
                    label_selector: self.config.label_selector.clone(),
                    field_selector: self.config.field_selector.clone(),
                    timeout_seconds: self.config.timeout_seconds,
                    bookmarks: true,
                };
                match self.api.watch(&params, &revision).await {
                    Ok(watch) => {
                        self.state = State::Watching {
                            revision,
                            watch: Box::new(watch),
                        };
                        Ok(None)
                    }
                    Err(e) if e.code() == Some(410) => {
                        tracing::info!(kind = self.api.kind().kind, %revision, "revision compacted, relisting");
                        Ok(None)
                    }
                    Err(e) => {
                        self.state = State::Resume { revision };
                        Err(e)
                    }
                }
            }
            State::Watching {
                revision,
                mut watch,
            } => match watch.next().await {
                None => {
                    self.state = State::Resume { revision };
                    Ok(None)
                }
                Some(Err(e)) => {
                    self.state = State::Resume { revision };
                    Err(e)
                }
                Some(Ok(event)) => {
                    let (seen, out) = match event {
                        WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                            (o.resource_version().to_string(), Some(Event::Applied(o)))
                        }
                        WatchEvent::Deleted(o) => {
                            (o.resource_version().to_string(), Some(Event::Deleted(o)))
                        }
                        WatchEvent::Bookmark { resource_version } => (resource_version, None),
                        WatchEvent::Error { code: 410, message } => {
                            tracing::info!(kind = self.api.kind().kind, %message, "watch expired, relisting");
                            return Ok(None);
                        }
                        WatchEvent::Error { code, message } => {
                            self.state = State::Resume { revision };
                            return Err(ClientError::Api {
                                code,
                                reason: String::new(),
                                message,
                                status: Value::Null,
                            });
                        }
                    };
                    // An event without a revision cannot move the resume point.
                    let revision = if seen.is_empty() { revision } else { seen };
                    self.state = State::Watching { revision, watch };
                    Ok(out)
                }
            },
        }
    }
}
