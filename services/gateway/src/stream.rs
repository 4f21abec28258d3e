//! `GET /v1/curtailments/{id}/events` (issue 9): a curtailment's state changes as Server-Sent
//! Events, from its start (or after the `Last-Event-ID` a reconnecting client sends), ending
//! after a terminal state. Each event is `event: transition`, `id:` the transition's id, and a
//! JSON `data` line `{"from", "to", "actor", "reason", "at"}`.
//!
//! It polls the event's own transitions (a partial index keeps each poll a few rows however many
//! targets the event has) rather than holding a database connection per client. Streams are
//! long-lived, so they sit outside the in-flight limit, under their own bound
//! ([`MAX_STREAMS`]): past it a new stream is refused with 503 `overloaded`.

use crate::AppState;
use crate::auth::Principal;
use crate::problem::{Kind, Problem};
use crate::routes::require;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use ebb_bus::Role;
use ebb_domain::{EventId, EventState};
use ebb_store::events;
use futures::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// Event streams open at once, per gateway.
pub const MAX_STREAMS: usize = 256;
/// How often a stream looks for new transitions.
const POLL: Duration = Duration::from_secs(1);

struct Follow {
    pool: ebb_store::PgPool,
    event: EventId,
    after: i64,
    pending: VecDeque<events::EventTransition>,
    done: bool,
    /// The event had ended when the stream opened: once nothing newer is found, it ends too
    /// (a client that reconnects after the last transition is not held open forever).
    ended: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn terminal(state: &str) -> bool {
    state
        .parse::<EventState>()
        .is_ok_and(EventState::is_terminal)
}

#[utoipa::path(
    get,
    path = "/v1/curtailments/{id}/events",
    tag = "curtailments",
    summary = "A curtailment's state changes as Server-Sent Events, until it ends (viewer)",
    params(
        ("id" = uuid::Uuid, Path, description = "The curtailment"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this transition")
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `event: transition`, `id`, JSON `data` {from, to, actor, reason, at}", content_type = "text/event-stream", body = String),
        crate::openapi::Problems
    )
)]
pub async fn events(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    require(&p, Role::Viewer)?;
    let event = crate::routes::parse_id(&id)?;
    // 404 unless the key reaches the event.
    let ended = crate::routes::load_view(&s, &p, event)
        .await?
        .state
        .is_terminal();
    let after = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                Problem::field("Last-Event-ID", "must be an event id this stream sent")
            })?,
    };
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        Problem::new(
            Kind::Overloaded,
            "too many event streams are open on this gateway",
        )
        .retry_after(5)
    })?;
    let follow = Follow {
        pool: s.pool.clone(),
        event,
        after,
        pending: VecDeque::new(),
        done: false,
        ended,
        _permit: permit,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(t) = f.pending.pop_front() {
                f.done = terminal(&t.to);
                let data = serde_json::json!({
                    "from": t.from, "to": t.to, "actor": t.actor, "reason": t.reason, "at": t.at,
                });
                let sse = Event::default()
                    .event("transition")
                    .id(t.id.to_string())
                    .data(data.to_string());
                return Some((Ok(sse), f));
            }
            if f.done {
                return None;
            }
            match events::event_transitions(&f.pool, f.event, f.after, 100).await {
                Ok(rows) if !rows.is_empty() => {
                    f.after = rows.last().map_or(f.after, |t| t.id);
                    f.pending.extend(rows);
                }
                Ok(_) if f.ended => return None,
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    // The client reconnects with its Last-Event-ID and misses nothing.
                    tracing::warn!(event_id = %f.event, error = ?e, "reading an event's transitions for its stream");
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
