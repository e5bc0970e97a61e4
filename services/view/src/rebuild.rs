//! `sharemesh view rebuild`: replays the catalog, reservation and payment streams from the
//! start into a fresh database, through the same projection the live service uses (events that
//! are already waiting applied together, as the live consumer applies a burst), and stops when it
//! has caught up with each stream's last event at start.
//!
//! The rebuilt database records the events as handled by the `view` consumer, so a view service
//! started on it skips what the rebuild already applied.

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use sea_orm::{EntityTrait, PaginatorTrait};
use sharemesh_mesh::events::inbox::{HandleError, IncomingEvent, apply_batch, apply_once};
use sharemesh_mesh::events::stream_name;
use sharemesh_mesh::storage::Db;

use crate::events::Projector;
use crate::storage::{Migrator, listing_views, reservation_views};

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Events read from the streams.
    pub events: u64,
    /// Events that could not be applied (undecodable), logged.
    pub skipped: u64,
    /// Listing views written.
    pub listing_views: u64,
    /// Reservation views written.
    pub reservation_views: u64,
}

/// The contexts whose streams the view is built from (its row of the topology), in the order
/// they are replayed.
pub fn sources() -> impl Iterator<Item = &'static str> {
    sharemesh_mesh::topology::Context::View.node().consumes.iter().map(|c| c.name())
}

/// Rebuilds the read models into the database at `database_url` (which must hold none yet)
/// from the streams on `nats_url`.
pub async fn rebuild(database_url: &str, nats_url: &str) -> Result<RebuildReport, String> {
    let db = Db::connect(database_url).await.map_err(|e| format!("database: {e}"))?;
    db.migrate::<Migrator>().await.map_err(|e| format!("database: {e}"))?;
    let existing = listing_views::entity::Entity::find()
        .count(db.conn())
        .await
        .map_err(|e| e.to_string())?
        + reservation_views::entity::Entity::find()
            .count(db.conn())
            .await
            .map_err(|e| e.to_string())?;
    if existing > 0 {
        return Err(format!(
            "{database_url} already holds {existing} read-model rows: rebuild into a fresh database"
        ));
    }
    let servers = sharemesh_mesh::events::server_list(nats_url);
    let client = async_nats::connect(servers).await.map_err(|e| format!("nats {nats_url}: {e}"))?;
    let js = jetstream::new(client);
    let mut report = RebuildReport::default();
    for context in sources() {
        let Ok(mut stream) = js.get_stream(stream_name(context)).await else {
            tracing::info!(stream = %stream_name(context), "no such stream yet; nothing to replay");
            continue;
        };
        let last = stream.info().await.map_err(|e| e.to_string())?.state.last_sequence;
        if last == 0 {
            continue;
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("replay {context}: {e}"))?;
        let messages = consumer.messages().await.map_err(|e| format!("replay {context}: {e}"))?;
        let mut chunks = messages.ready_chunks(REPLAY_BATCH);
        while let Some(chunk) = chunks.next().await {
            let mut events = Vec::with_capacity(chunk.len());
            let mut caught_up = false;
            for msg in chunk {
                let msg = msg.map_err(|e| format!("replay {context}: {e}"))?;
                let seq = msg.info().map(|i| i.stream_sequence).map_err(|e| e.to_string())?;
                events.push((IncomingEvent::from_message(&msg), tracing::Span::none()));
                if seq >= last {
                    caught_up = true;
                    break;
                }
            }
            replay(&db, &events, &mut report).await?;
            if caught_up {
                break;
            }
        }
    }
    report.listing_views = listing_views::entity::Entity::find()
        .count(db.conn())
        .await
        .map_err(|e| e.to_string())?;
    report.reservation_views = reservation_views::entity::Entity::find()
        .count(db.conn())
        .await
        .map_err(|e| e.to_string())?;
    Ok(report)
}

/// At most this many events that are already waiting are applied in one transaction.
const REPLAY_BATCH: usize = 256;

/// Applies `events` in one transaction, as the live consumer applies a burst; if that fails,
/// one at a time, skipping (and counting) those that can never apply.
async fn replay(db: &Db, events: &[(IncomingEvent, tracing::Span)], report: &mut RebuildReport) -> Result<(), String> {
    report.events += events.len() as u64;
    if apply_batch(db, "view", &Projector, events).await.is_ok() {
        return Ok(());
    }
    for (event, _) in events {
        match apply_once(db, "view", &Projector, event).await {
            Ok(_) => {}
            Err(HandleError::Permanent(reason)) => {
                report.skipped += 1;
                tracing::error!(event_id = %event.event_id, %reason, "event skipped during rebuild");
            }
            Err(HandleError::Transient(reason)) => return Err(format!("event {}: {reason}", event.event_id)),
        }
    }
    Ok(())
}
