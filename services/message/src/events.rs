//! The message service's events: what it consumes (reservation and catalog events, turned into
//! PENDING messages in the inbox's transaction) and what it publishes (`MessageSent`, through
//! the outbox, when a delivery succeeds).
//!
//! Recording is idempotent twice over: the inbox applies an event id once per consumer, and the
//! unique key `(event_id, recipient_role)` keeps a replayed event from recording a second message.

use std::collections::HashSet;
use std::sync::LazyLock;

use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::events::{CatalogEvent, MessageEvent, ReservationEvent};
use sharemesh_contracts::message::v1::{DeliveryStatus, Message, MessageSent};
use sharemesh_mesh::events::inbox::{Delivered, EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::events::outbox::emit_all;
use sharemesh_mesh::storage::WriteTxn;

use crate::Messages;
use crate::compose::{self, Draft};
use crate::storage::messages::{self as repo, MessageRow};

/// `ce-source` of message events.
pub const SOURCE: &str = "sharemesh/message";

impl Messages {
    /// Records the drafts made from each event as PENDING messages inside `tx` (due at once), one
    /// statement per [`sharemesh_mesh::storage::ROWS_PER_STATEMENT`] rows, and once `tx` has
    /// committed wakes the dispatcher. While the dispatcher runs the messages are claimed as
    /// they are recorded and handed to it ([`crate::handoff`]). A draft whose `(event, role)` is
    /// already recorded is skipped. Returns how many were new.
    pub async fn record_in(&self, tx: &WriteTxn, made: Vec<(&IncomingEvent, Vec<Draft>)>) -> Result<usize, sea_orm::DbErr> {
        let now = now_ms();
        let count = made.iter().map(|(_, drafts)| drafts.len()).sum();
        let lease_until_ms = self.handoff.lease_until(now, count);
        let rows: Vec<MessageRow> = made
            .into_iter()
            .flat_map(|(event, drafts)| drafts.into_iter().map(move |draft| (event, draft)))
            .map(|(event, draft)| MessageRow {
                message_id: uuid::Uuid::now_v7().to_string(),
                event_id: event.event_id.clone(),
                recipient_id: draft.recipient_id,
                recipient_role: repo::role_name(draft.role).to_owned(),
                reservation_id: draft.reservation_id,
                listing_id: draft.listing_id,
                topic: draft.topic,
                subject: draft.subject,
                body: draft.body,
                delivery_status: DeliveryStatus::Pending.stored().to_owned(),
                failure_reason: String::new(),
                attempts: 0,
                next_attempt_at_ms: now,
                created_at_ms: now,
                delivered_at_ms: None,
                lease_until_ms,
            })
            .collect();
        // What is handed over once committed (rows recorded claimed; unclaimed ones are found
        // in the table).
        let handed = if lease_until_ms > 0 { rows.clone() } else { Vec::new() };
        let recorded: HashSet<String> = repo::insert_new(&**tx, rows).await?.into_iter().collect();
        for message_id in &recorded {
            tracing::debug!(%message_id, "message recorded");
        }
        if !recorded.is_empty() {
            let handed: Vec<MessageRow> = handed.into_iter().filter(|row| recorded.contains(&row.message_id)).collect();
            let handoff = self.handoff.clone();
            tx.after_commit(move || {
                if handed.is_empty() {
                    handoff.committed_unclaimed();
                } else {
                    handoff.committed(handed);
                }
            });
        }
        let recorded = recorded.len();
        Ok(recorded)
    }
}

/// A consumer that turns each event of its stream into messages ([`compose`]).
trait Drafting: Sync {
    /// Where messages are recorded.
    fn messages(&self) -> &Messages;

    /// The messages `event` calls for (none for most events of some streams).
    fn drafts(&self, event: &IncomingEvent) -> Result<Vec<Draft>, HandleError>;
}

/// [`EventHandler::handle`] of a [`Drafting`] consumer: records `event`'s messages.
fn record_one<'a>(consumer: &'a impl Drafting, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
    Box::pin(async move {
        let drafts = consumer.drafts(event)?;
        consumer.messages().record_in(tx, vec![(event, drafts)]).await?;
        Ok(())
    })
}

/// [`EventHandler::handle_all`] of a [`Drafting`] consumer: records a batch's messages together.
fn record_all<'a>(consumer: &'a impl Drafting, tx: &'a WriteTxn, events: &'a [Delivered<'a>]) -> HandleFuture<'a> {
    Box::pin(async move {
        let mut made = Vec::with_capacity(events.len());
        for (event, span) in events {
            made.push((*event, span.in_scope(|| consumer.drafts(event))?));
        }
        consumer.messages().record_in(tx, made).await?;
        Ok(())
    })
}

/// Consumes the reservation stream: every state change notifies the customer, and the host
/// where [`compose`] says so.
pub struct ReservationEvents {
    /// Where messages are recorded.
    pub messages: Messages,
}

impl Drafting for ReservationEvents {
    fn messages(&self) -> &Messages {
        &self.messages
    }

    fn drafts(&self, event: &IncomingEvent) -> Result<Vec<Draft>, HandleError> {
        // Every reservation event notifies somebody (see [`compose`]).
        let Some(reservation_event) = event.decode_as::<ReservationEvent>()? else {
            return Ok(Vec::new());
        };
        let reservation = reservation_event
            .reservation()
            .ok_or_else(|| HandleError::Permanent(format!("{} without a reservation", event.event_type)))?;
        Ok(compose::reservation_messages(reservation_event.change(), reservation))
    }
}

impl EventHandler for ReservationEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        record_one(self, tx, event)
    }

    fn handle_all<'a>(&'a self, tx: &'a WriteTxn, events: &'a [Delivered<'a>]) -> HandleFuture<'a> {
        record_all(self, tx, events)
    }
}

/// Consumes the catalog stream: a registered listing notifies its host; other catalog events
/// notify nobody.
pub struct CatalogEvents {
    /// Where messages are recorded.
    pub messages: Messages,
}

impl Drafting for CatalogEvents {
    fn messages(&self) -> &Messages {
        &self.messages
    }

    fn drafts(&self, event: &IncomingEvent) -> Result<Vec<Draft>, HandleError> {
        let registered = match event.decode_as::<CatalogEvent>()? {
            Some(CatalogEvent::Registered(registered)) => registered,
            Some(CatalogEvent::Updated(_) | CatalogEvent::Deleted(_) | CatalogEvent::Booked(_) | CatalogEvent::Released(_)) | None => {
                return Ok(Vec::new());
            }
        };
        let listing = registered
            .listing
            .ok_or_else(|| HandleError::Permanent("ListingRegistered without a listing".into()))?;
        Ok(compose::listing_registered(&listing))
    }
}

impl EventHandler for CatalogEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        record_one(self, tx, event)
    }

    fn handle_all<'a>(&'a self, tx: &'a WriteTxn, events: &'a [Delivered<'a>]) -> HandleFuture<'a> {
        record_all(self, tx, events)
    }

    /// Only ListingRegistered sends a message.
    fn wanted(&self) -> Option<&[String]> {
        static REGISTERED: LazyLock<Vec<String>> =
            LazyLock::new(|| vec![<sharemesh_contracts::catalog::v1::ListingRegistered as prost::Name>::full_name()]);
        Some(&REGISTERED)
    }
}

/// Emits `MessageSent` for each delivered message inside `tx` (inserted with its commit): each paired
/// with the id of the event it was made from. Its aggregate is the message, at version
/// `attempts + 1` (recorded at 1, each attempt one more); it is correlated with the reservation
/// (or the listing) and caused by the event the message was made from.
pub async fn sent_all(tx: &WriteTxn, delivered: Vec<(Message, String)>, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let events: Vec<MessageEvent> = delivered
        .into_iter()
        .map(|(message, caused_by_event)| sent(message, &caused_by_event, now_ms))
        .collect();
    emit_all(tx, SOURCE, &events).await
}

/// `MessageSent` for `message`, as delivered at `now_ms`.
fn sent(message: Message, caused_by_event: &str, now_ms: i64) -> MessageEvent {
    let event_id = uuid::Uuid::now_v7().to_string();
    let id = message.message_id.clone();
    let correlation = [&message.reservation_id, &message.listing_id, &message.message_id]
        .into_iter()
        .find(|id| !id.is_empty())
        .cloned()
        .unwrap_or_default();
    let metadata = EventMetadata::new(
        &event_id,
        &id,
        i64::from(message.attempts) + 1,
        &correlation,
        caused_by_event,
        "",
        now_ms,
    );
    MessageEvent::Sent(MessageSent {
        metadata: Some(metadata),
        message: Some(message),
    })
}
