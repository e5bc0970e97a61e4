//! PlaceReservation: the orchestrated booking saga.
//!
//! PENDING -> catalog `HoldListing` -> payment `ApprovePayment` -> catalog `ConfirmHold` ->
//! PAID (or CONFIRMED at once for auto-confirmed kinds). The saga is persisted before each call
//! that could leave an effect recovery must know of, so [`crate::recovery`] can finish or
//! compensate a saga a crash interrupted: PENDING at the hold step before the hold, then at the
//! payment step before the charge. The charge's outcome is persisted with the booking, in one
//! commit: a crash between them leaves the saga at the payment step, whose recovery asks payment
//! what it charged instead of charging again, and books the hold (`ConfirmHold` is idempotent).
//!
//! Compensation follows one rule, so that no driver undoes what another committed: the decision
//! is committed first (REJECTED, version-checked), and only a driver whose decision committed
//! compensates. It then releases the hold at once if catalog answers; if not, nothing is lost:
//! catalog releases the hold of every reservation it sees `ReservationRejected` for, and payment
//! voids or refunds its charge — both through their inboxes, retried until they land.
//!
//! Outages: a saga that meets an unreachable catalog or payment before anything is charged ends
//! REJECTED and `retryable`, and answers UNAVAILABLE; the same request id then runs again as a new
//! attempt (a circuit already open refuses before anything is stored). Once charged, an outage at
//! the booking step leaves the reservation PENDING: recovery books it when catalog is back (or
//! rejects and refunds it if the hold lapsed meanwhile), and the same request id answers its
//! current state.

use sea_orm::DbErr;
use sharemesh_contracts::catalog::v1::{ConfirmHoldRequest, HoldListingRequest, ReleaseHoldRequest};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::payment::v1::{ApprovePaymentRequest, ListPaymentsRequest, Payment, PaymentCard, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::storage::WriteTxn;
use sharemesh_mesh::storage::group::UnitFuture;

use crate::domain::{self, ReservationError, Step};
use crate::{Reservations, save_in, stage};
use sharemesh_contracts::events::ReservationChange;

use crate::events;
use crate::storage::reservations::{self as repo, ReservationRow};
use crate::upstream::is_outage;

/// A PlaceReservation request, decoded.
#[derive(Clone)]
pub struct PlaceRequest {
    /// The listing.
    pub listing_id: String,
    /// `[start, end)` in ms.
    pub window: Option<(i64, i64)>,
    /// The card; used in flight only, never stored.
    pub card: Option<PaymentCard>,
    /// The client's idempotency key.
    pub request_id: String,
}

impl std::fmt::Debug for PlaceRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaceRequest")
            .field("listing_id", &self.listing_id)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

/// How many attempts of one request a PlaceReservation tries to store before it answers ABORTED
/// (each found taken by a concurrent call of the same request that then failed retryably).
const PLACE_TRIES: usize = 3;

impl Reservations {
    /// Places a reservation and runs its saga to the end. The same `request_id` from the same
    /// customer returns the first reservation and runs no second saga.
    pub async fn place(&self, caller: &Caller, req: PlaceRequest) -> Result<Reservation, ReservationError> {
        caller
            .require(&[Role::Customer, Role::Host, Role::Admin])
            .map_err(|s| ReservationError::PermissionDenied(s.message().to_owned()))?;
        domain::validate_id("listing_id", &req.listing_id)?;
        let (start_ms, end_ms) = domain::validate_window(req.window, now_ms(), self.horizon)?;
        domain::validate_request_id(&req.request_id)?;
        let card = req.card.ok_or_else(|| ReservationError::invalid("card", "is required"))?;
        let reservation_id = uuid::Uuid::now_v7().to_string();
        let _in_flight = self.in_flight.try_enter(&reservation_id);
        // The first attempt of the request unless a stored one says otherwise: a request seen
        // before costs an insert that finds its attempt taken, a new one (nearly every one) no
        // read before its insert.
        let mut attempt = 1;
        let row = 'stored: {
            for _ in 0..PLACE_TRIES {
                // An open circuit fails the call before it leaves this process: refuse now,
                // store nothing (but answer a request already settled).
                if let Err(open) = self.upstreams.refuse_if_open() {
                    return match repo::find_by_request(&self.db, &caller.id, &req.request_id).await? {
                        Some(settled) if !settled.retryable => Ok(settled.to_proto()),
                        _ => Err(open),
                    };
                }
                let row = ReservationRow::placed(
                    &reservation_id,
                    &caller.id,
                    &req.request_id,
                    &req.listing_id,
                    (start_ms, end_ms),
                    attempt,
                );
                if let Some(stored) = self.insert_placed(row, &req.request_id, &caller.id).await? {
                    break 'stored stored;
                }
                // Taken: the request was placed before, or is being placed now.
                attempt = match repo::find_by_request(&self.db, &caller.id, &req.request_id).await? {
                    Some(existing) if !existing.retryable => return Ok(existing.to_proto()),
                    Some(existing) if existing.attempt >= attempt => existing.attempt + 1,
                    _ => break,
                };
            }
            return Err(ReservationError::Aborted("concurrent duplicate request; retry".into()));
        };
        tracing::info!(reservation_id = %row.reservation_id, listing_id = %row.listing_id, "reservation placed");
        self.drive(row, Some(&card)).await
    }

    /// Stores `row`, a new attempt, with its Placed event, unless its request has that attempt
    /// already (`None` then, and nothing is written).
    async fn insert_placed(&self, row: ReservationRow, request_id: &str, actor: &str) -> Result<Option<ReservationRow>, ReservationError> {
        let (request_id, actor, now) = (request_id.to_owned(), actor.to_owned(), row.created_at_ms);
        let stored = self
            .db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Option<ReservationRow>, DbErr> {
                let (mut row, request_id, actor) = (row.clone(), request_id.clone(), actor.clone());
                Box::pin(async move {
                    let (event_id, placed) = events::event(ReservationChange::Placed, row.to_proto(), &request_id, &actor, now);
                    row.last_event_id = event_id;
                    if !repo::insert_new(&**tx, row.clone()).await? {
                        return Ok(None);
                    }
                    events::emit_all(tx, &[placed]).await?;
                    Ok(Some(row))
                })
            })
            .await?;
        Ok(stored)
    }

    /// Runs the saga of `row` from its current step to the end. Without a card (recovery), a
    /// saga that had not been charged yet is compensated instead of charged.
    pub(crate) async fn drive(&self, mut row: ReservationRow, card: Option<&PaymentCard>) -> Result<Reservation, ReservationError> {
        loop {
            match (row.step(), card) {
                (Step::Hold, Some(_)) => self.hold_step(&mut row).await?,
                (Step::Hold, None) => {
                    let reason = "interrupted before payment; nothing was charged";
                    return Err(self.reject(&mut row, reason, Compensate::ReleaseHold).await);
                }
                (Step::Pay, Some(card)) => self.pay_step(&mut row, card).await?,
                (Step::Pay, None) => self.recover_payment(&mut row).await?,
                (Step::Confirm, _) => self.confirm_step(&mut row).await?,
                (Step::Done, _) => return Ok(row.to_proto()),
            }
        }
    }

    async fn hold_step(&self, row: &mut ReservationRow) -> Result<(), ReservationError> {
        let req = HoldListingRequest {
            listing_id: row.listing_id.clone(),
            reservation_id: row.reservation_id.clone(),
            window: Some(TimeWindow::from_ms(row.start_ms, row.end_ms)),
        };
        match self.upstreams.catalog.clone().hold_listing(req).await {
            Ok(res) => {
                let res = res.into_inner();
                let listing = res.listing.unwrap_or_default();
                let kind = ListingKind::try_from(listing.kind).unwrap_or_default();
                row.held(kind, listing.title, listing.host_id, res.amount.unwrap_or_default())?;
                self.commit(row, None, "").await
            }
            Err(status) if is_outage(&status) => self.reject_retryable(row, "catalog", &status, "catalog unavailable").await,
            Err(status) => {
                let reason = status.message().to_owned();
                self.refuse(row, &reason, Compensate::Nothing, status).await
            }
        }
    }

    async fn pay_step(&self, row: &mut ReservationRow, card: &PaymentCard) -> Result<(), ReservationError> {
        let req = ApprovePaymentRequest {
            reservation_id: row.reservation_id.clone(),
            customer_id: row.customer_id.clone(),
            amount: Some(Money::new(row.amount_minor, &row.currency)),
            card: Some(card.clone()),
        };
        match self.upstreams.payment.clone().approve_payment(req).await {
            Ok(res) => {
                let payment = res.into_inner().payment.unwrap_or_default();
                self.settle_payment(row, payment).await
            }
            Err(status) if is_outage(&status) => {
                let reason = "payment unavailable; nothing was charged";
                self.reject_retryable(row, "payment", &status, reason).await
            }
            Err(status) => {
                let reason = status.message().to_owned();
                self.refuse(row, &reason, Compensate::ReleaseHold, status).await
            }
        }
    }

    /// Records the payment's outcome: approved -> on to the booking; anything else -> rejected.
    async fn settle_payment(&self, row: &mut ReservationRow, payment: Payment) -> Result<(), ReservationError> {
        let status = PaymentStatus::try_from(payment.status).unwrap_or(PaymentStatus::Unspecified);
        row.payment_id = payment.payment_id;
        row.payment_status = status.stored().to_owned();
        if let Some(card) = payment.card {
            row.card_brand = card.brand;
            row.card_last4 = card.last4;
        }
        if status == PaymentStatus::Approved {
            // Committed with the booking (see the module docs).
            return row.charged();
        }
        let reason = match status {
            PaymentStatus::Declined => format!("payment declined: {}", payment.decline_reason),
            _ => format!("payment was voided: {}", payment.decline_reason),
        };
        Err(self.reject(row, &reason, Compensate::ReleaseHold).await)
    }

    /// After a crash in the payment step: ask payment what happened instead of charging again.
    async fn recover_payment(&self, row: &mut ReservationRow) -> Result<(), ReservationError> {
        let req = ListPaymentsRequest {
            reservation_id: row.reservation_id.clone(),
            page_size: 1,
            ..Default::default()
        };
        match self.upstreams.payment.clone().list_payments(req).await {
            Ok(res) => match res.into_inner().payments.into_iter().next() {
                Some(payment) => self.settle_payment(row, payment).await,
                None => {
                    let reason = "interrupted before payment; nothing was charged";
                    Err(self.reject(row, reason, Compensate::ReleaseHold).await)
                }
            },
            Err(status) => Err(self.upstreams.unavailable("payment", &status)),
        }
    }

    async fn confirm_step(&self, row: &mut ReservationRow) -> Result<(), ReservationError> {
        let req = ConfirmHoldRequest {
            reservation_id: row.reservation_id.clone(),
        };
        match self.upstreams.catalog.clone().confirm_hold(req).await {
            Ok(_) => {
                sharemesh_mesh::failpoint::hit("saga.after_confirm_hold");
                row.booked()?;
                let (this, booked) = (self.clone(), row.clone());
                *row = self
                    .db
                    .write(move |tx: &WriteTxn| -> UnitFuture<'_, ReservationRow, ReservationError> {
                        let (this, mut row) = (this.clone(), booked.clone());
                        Box::pin(async move {
                            // Paid, and for a kind confirmed on booking Confirmed too: two
                            // events, written as one change of the row.
                            let expected = row.version;
                            let mut staged: Vec<_> = stage(&mut row, Some(ReservationChange::Paid), None, "").into_iter().collect();
                            if this.auto_confirm.contains(&row.listing_kind) {
                                row.confirm()?;
                                staged.extend(stage(&mut row, Some(ReservationChange::Confirmed), None, ""));
                            }
                            save_in(tx, &row, expected, &staged).await?;
                            Ok(row)
                        })
                    })
                    .await?;
                saga_outcome(row.status());
                tracing::info!(reservation_id = %row.reservation_id, status = %row.status, "reservation paid");
                Ok(())
            }
            // Charged, and the hold may be booked already (a lost answer): never reject here.
            // The reservation stays PENDING at the payment step; recovery finds the charge and
            // books the hold when catalog answers.
            Err(status) if is_outage(&status) => Err(self.upstreams.unavailable("catalog", &status)),
            Err(status) => {
                let reason = format!(
                    "the hold lapsed before it was booked ({}); the payment is refunded",
                    status.message()
                );
                Err(self.reject(row, &reason, Compensate::ReleaseHold).await)
            }
        }
    }

    /// Ends the saga REJECTED with `reason`, then compensates, and returns `answer` — the
    /// refusal the caller gets. The rejection commits first, version-checked: a driver that lost
    /// the saga to another (recovery on another replica) gets that ABORTED instead, and
    /// compensates nothing.
    async fn reject_with(
        &self,
        row: &mut ReservationRow,
        reason: &str,
        compensate: Compensate,
        answer: ReservationError,
    ) -> ReservationError {
        if let Err(e) = row.reject(reason) {
            return e;
        }
        if let Err(e) = self.commit(row, Some(ReservationChange::Rejected), "").await {
            tracing::warn!(reservation_id = %row.reservation_id, error = %e, "rejection not recorded; whoever holds the saga now finishes it");
            return e;
        }
        saga_outcome(row.status());
        tracing::info!(reservation_id = %row.reservation_id, %reason, "reservation rejected");
        if compensate == Compensate::ReleaseHold {
            self.release(row, reason).await;
        }
        answer
    }

    /// [`Self::reject_with`] answering FAILED_PRECONDITION with the reason.
    pub(crate) async fn reject(&self, row: &mut ReservationRow, reason: &str, compensate: Compensate) -> ReservationError {
        let answer = ReservationError::FailedPrecondition(reason.to_owned());
        self.reject_with(row, reason, compensate, answer).await
    }

    /// [`Self::reject_with`] for a refusal by an upstream: answers with the upstream's own status
    /// (and its details).
    async fn refuse(
        &self,
        row: &mut ReservationRow,
        reason: &str,
        compensate: Compensate,
        status: tonic::Status,
    ) -> Result<(), ReservationError> {
        Err(self.reject_with(row, reason, compensate, ReservationError::Refused(status)).await)
    }

    /// [`Self::reject_with`] for an outage before anything was charged: the rejection is marked
    /// retryable, so the same request id runs again, and the answer is UNAVAILABLE.
    async fn reject_retryable(
        &self,
        row: &mut ReservationRow,
        upstream: &'static str,
        status: &tonic::Status,
        reason: &str,
    ) -> Result<(), ReservationError> {
        let answer = self.upstreams.unavailable(upstream, status);
        row.retryable = true;
        Err(self.reject_with(row, reason, Compensate::ReleaseHold, answer).await)
    }

    /// Gives the hold back now if catalog answers. A failure is only logged: catalog also
    /// releases it when it consumes the `ReservationRejected` just committed.
    async fn release(&self, row: &ReservationRow, reason: &str) {
        let req = ReleaseHoldRequest {
            reservation_id: row.reservation_id.clone(),
            reason: reason.to_owned(),
        };
        match self.upstreams.catalog.clone().release_hold(req).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => tracing::info!(
                reservation_id = %row.reservation_id,
                error = %status.message(),
                "release not answered; catalog releases the hold when it sees ReservationRejected"
            ),
        }
    }
}

/// What a rejection undoes once it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compensate {
    /// Nothing was held (catalog refused the hold).
    Nothing,
    /// Release the hold (payment voids or refunds on the event by itself).
    ReleaseHold,
}

/// Counts a saga that ended (`sharemesh_saga_outcomes_total{outcome}`: `paid`, `confirmed`,
/// `rejected`).
fn saga_outcome(status: ReservationStatus) {
    sharemesh_mesh::telemetry::metrics::metrics()
        .saga_outcomes
        .get_or_create(&sharemesh_mesh::telemetry::metrics::OutcomeLabels {
            outcome: status.stored().to_ascii_lowercase(),
        })
        .inc();
}
