//! Live usage: every open dashboard shows a new total within a second of its commit, on any instance, without
//! polling the database per browser.
//!
//! Writers `NOTIFY tally_usage, '<user id>'` in the transaction that records usage (delivered only on commit).
//! Each instance keeps one `LISTEN` connection ([`LiveHub::start`]) and bumps a `watch` channel per watched user;
//! each open stream (`GET /api/usage/live`, server-sent events) waits on its user's channel and then reads the
//! total from the period counters — a few rows, however busy the user. Bumps coalesce: a stream that is behind reads
//! once for many commits. After the LISTEN connection drops, every stream re-reads once (nothing missed is lost).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tower_sessions::Session;
use uuid::Uuid;

use super::UsageState;
use crate::error::AppError;

/// The NOTIFY channel usage changes are announced on.
pub const CHANNEL: &str = "tally_usage";
/// Where browsers open the stream.
pub const PATH: &str = super::LIVE_PATH;
/// Commits that land this close together are read once.
const COALESCE: Duration = Duration::from_millis(20);
/// How soon a browser re-opens a stream that broke off.
const BROWSER_RETRY: Duration = Duration::from_secs(1);

/// The users watched on this instance, each with a change counter; whether the LISTEN connection is up; and the
/// shutdown signal that ends every open stream.
#[derive(Clone)]
pub struct LiveHub {
    watched: Arc<Mutex<HashMap<Uuid, watch::Sender<u64>>>>,
    listening: Arc<AtomicBool>,
    stopping: watch::Sender<bool>,
}

impl Default for LiveHub {
    fn default() -> Self {
        LiveHub { watched: Arc::default(), listening: Arc::default(), stopping: watch::channel(false).0 }
    }
}

/// Counts an open stream in the metrics for as long as it lives.
struct OpenStream;

impl OpenStream {
    fn new() -> OpenStream {
        metrics::gauge!(crate::telemetry::LIVE_STREAMS).increment(1.0);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::gauge!(crate::telemetry::LIVE_STREAMS).decrement(1.0);
    }
}

impl LiveHub {
    /// A hub fed by a LISTEN connection of `pool` (a background task that reconnects by itself).
    pub fn start(pool: PgPool) -> LiveHub {
        let hub = LiveHub::default();
        tokio::spawn(listen(pool, hub.clone()));
        hub
    }

    /// Changes of `user`'s usage, from now on.
    pub fn watch(&self, user: Uuid) -> watch::Receiver<u64> {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        // Forget users nobody watches any more, so the map stays as small as the open streams.
        watched.retain(|_, sender| sender.receiver_count() > 0);
        watched.entry(user).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Whether the LISTEN connection is up (readiness).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Ends every open stream (their browsers reconnect, to another instance) and refuses new ones: graceful
    /// shutdown, which would otherwise wait for streams that never end.
    pub fn shut_down(&self) {
        self.stopping.send_replace(true);
    }

    /// Whether [`LiveHub::shut_down`] was called (readiness turns false, so the load balancer drains this instance).
    pub fn is_shutting_down(&self) -> bool {
        *self.stopping.borrow()
    }

    fn changed(&self, user: Uuid) {
        if let Some(sender) = self.watched.lock().unwrap_or_else(|p| p.into_inner()).get(&user) {
            sender.send_modify(|n| *n += 1);
        }
    }

    fn all_changed(&self) {
        for sender in self.watched.lock().unwrap_or_else(|p| p.into_inner()).values() {
            sender.send_modify(|n| *n += 1);
        }
    }
}

async fn listen(pool: PgPool, hub: LiveHub) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(err) => {
                tracing::warn!(error = %err, "live usage: cannot connect to LISTEN; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "live usage: LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        hub.listening.store(true, Ordering::Relaxed);
        // Whatever was committed while nobody listened.
        hub.all_changed();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Ok(user) = notification.payload().parse() {
                        hub.changed(user);
                    }
                }
                // The connection dropped and was re-established: notifications in between are gone.
                Ok(None) => hub.all_changed(),
                Err(err) => {
                    hub.listening.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %err, "live usage: LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

/// `GET /api/usage/live`: the signed-in user's shown meters (a JSON array of usage summaries) now, then after every
/// change, as server-sent events (`event: usage`). Browsers' `EventSource` reconnects by itself.
pub async fn stream(
    State(state): State<UsageState>,
    session: Session,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    let user = crate::auth::session::user_of(&session).await?.ok_or(AppError::Unauthorized)?;
    if state.live.is_shutting_down() {
        return Err(AppError::Unavailable("this instance is shutting down; reconnect".into()));
    }
    let changes = state.live.watch(user);
    let stopping = state.live.stopping.subscribe();
    let open = OpenStream::new();
    let events = futures::stream::unfold(
        (state, changes, stopping, open, true),
        move |(state, mut changes, mut stopping, open, first)| async move {
            if !first {
                // Shutdown ends the stream (the browser reconnects to another instance) instead of holding it.
                tokio::select! {
                    changed = changes.changed() => changed.ok()?,
                    _ = stopping.wait_for(|stop| *stop) => return None,
                }
                tokio::time::sleep(COALESCE).await;
                changes.borrow_and_update();
            }
            let event = match super::shown_meters(&state, user).await {
                Ok(Some(shown)) => Event::default().event("usage").json_data(&shown).ok()?,
                // The account is gone: end the stream.
                Ok(None) => return None,
                Err(err) => {
                    tracing::warn!(error = %err, "live usage: summary read failed");
                    Event::default().event("unavailable").data("usage could not be read; retrying")
                }
            };
            // The first event also tells the browser to reconnect after 1 s rather than its default 3 s.
            let event = if first { event.retry(BROWSER_RETRY) } else { event };
            Some((Ok(event), (state, changes, stopping, open, false)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
