//! ApprovePayment (internal): charge a card for a reservation, at most once.
//!
//! Idempotent per reservation: the first attempt stores a row (APPROVED or DECLINED) and its
//! event in one transaction; every later attempt for the same reservation returns that row
//! unchanged, whatever it asks for. In particular a retry with a different amount or card gets
//! the first result, not a second charge: the reservation id is the idempotency key, and
//! amounts are fixed by catalog when the window is held, so a different amount is a caller bug
//! that must never turn into a double charge. A reservation voided before its approval arrived
//! (see [`crate::refund`]) answers with its CANCELLED row, so a late approval never charges.

use sharemesh_contracts::common::v1::Money;
use sharemesh_contracts::payment::v1::{CardSummary, Payment, PaymentCard};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::storage::group::UnitFuture;
use sharemesh_mesh::storage::{WriteTxn, is_unique_violation};

use crate::Payments;
use crate::domain::{self, PaymentError};
use crate::events::{self, Cause};
use crate::storage::payments::{self as repo, APPROVED, DECLINED, PaymentRow};

/// What an approval came to.
enum Decision {
    /// The reservation was decided before: its first result.
    Existing(Payment),
    /// A first attempt whose request did not validate.
    Invalid,
    /// Decided now (APPROVED or DECLINED).
    Decided(Payment),
}

/// What a first approval needs, validated: the card reduced to what may be kept.
#[derive(Debug, Clone)]
struct Charge {
    customer_id: String,
    amount: Money,
    card: CardSummary,
}

fn require_internal(caller: &Caller) -> Result<(), PaymentError> {
    match caller.role {
        Role::Service => Ok(()),
        other => Err(PaymentError::PermissionDenied(format!(
            "only services may approve payments (caller is a {other})"
        ))),
    }
}

fn check_charge(customer_id: &str, amount: Option<&Money>, card: Option<&PaymentCard>, now_ms: i64) -> Result<Charge, PaymentError> {
    domain::validate_id("customer_id", customer_id)?;
    let amount = domain::validate_amount(amount)?.clone();
    let card = domain::validate_card(card, now_ms)?;
    Ok(Charge {
        customer_id: customer_id.to_owned(),
        amount,
        card,
    })
}

impl Payments {
    /// Charges `card` for a reservation (callers with the `service` or `admin` role only).
    ///
    /// Returns the payment: APPROVED, or DECLINED with its reason (a decline is not an error).
    /// A retry returns the first attempt's payment unchanged and never charges twice; the
    /// customer, amount and card of a retry are not checked against the first attempt.
    pub async fn approve(
        &self,
        caller: &Caller,
        reservation_id: &str,
        customer_id: &str,
        amount: Option<&Money>,
        card: Option<&PaymentCard>,
    ) -> Result<Payment, PaymentError> {
        require_internal(caller)?;
        domain::validate_id("reservation_id", reservation_id)?;
        let now = now_ms();
        // Checked before taking the writer, reported only for a first attempt: a retry gets the
        // first result even if, say, the card expired in between.
        let (valid, invalid) = match check_charge(customer_id, amount, card, now) {
            Ok(charge) => (Some(charge), None),
            Err(e) => (None, Some(e)),
        };
        let (this, id, actor) = (self.clone(), reservation_id.to_owned(), caller.id.clone());
        let decided = self
            .db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Decision, PaymentError> {
                let (this, id, valid, actor) = (this.clone(), id.clone(), valid.clone(), actor.clone());
                Box::pin(async move { this.decide_in(tx, &id, valid, &actor, now).await })
            })
            .await;
        let payment = match decided {
            Ok(Decision::Existing(existing)) => {
                tracing::info!(
                    payment_id = %existing.payment_id,
                    reservation_id,
                    status = existing.status().as_str_name(),
                    "approval retried; returning the first result"
                );
                return Ok(existing);
            }
            Ok(Decision::Decided(payment)) => payment,
            Ok(Decision::Invalid) => {
                return Err(invalid.unwrap_or_else(|| PaymentError::Aborted("approval without a charge; retry".into())));
            }
            // A concurrent first attempt won (PostgreSQL; SQLite writers queue): answer with its row.
            Err(e) if e.db_err().is_some_and(is_unique_violation) => return self.existing(reservation_id).await,
            Err(e) => return Err(e),
        };
        // Only ids, brand and last four digits: never the card number.
        let card = payment.card.clone().unwrap_or_default();
        tracing::info!(
            payment_id = %payment.payment_id,
            reservation_id,
            card_brand = %card.brand,
            card_last4 = %card.last4,
            status = payment.status().as_str_name(),
            decline_reason = %payment.decline_reason,
            "payment decided"
        );
        Ok(payment)
    }

    /// [`Payments::approve`]'s reads and writes, in `tx`: the first result if there is one,
    /// else the decision on `charge` (`None`: the request did not validate) and its event.
    async fn decide_in(
        &self,
        tx: &WriteTxn,
        reservation_id: &str,
        charge: Option<Charge>,
        actor: &str,
        now: i64,
    ) -> Result<Decision, PaymentError> {
        let Some(charge) = charge else {
            // A retry gets the first result even when this attempt does not validate.
            return Ok(repo::find_by_reservation(&**tx, reservation_id)
                .await?
                .map_or(Decision::Invalid, |existing| Decision::Existing(existing.to_proto())));
        };
        let decline_reason = domain::decline_reason(&charge.card, charge.amount.amount_minor, self.limit_minor);
        let row = PaymentRow {
            payment_id: uuid::Uuid::now_v7().to_string(),
            reservation_id: reservation_id.to_owned(),
            customer_id: charge.customer_id,
            amount_minor: charge.amount.amount_minor,
            currency: charge.amount.currency,
            status: if decline_reason.is_some() { DECLINED } else { APPROVED }.into(),
            decline_reason: decline_reason.unwrap_or_default(),
            card_brand: charge.card.brand,
            card_last4: charge.card.last4,
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let payment = row.to_proto();
        if !repo::insert_new(&**tx, row).await? {
            // Decided already (a retried call): the first result, whatever this attempt carries.
            let existing = repo::find_by_reservation(&**tx, reservation_id)
                .await?
                .ok_or_else(|| PaymentError::Aborted(format!("the payment of reservation {reservation_id} changed concurrently; retry")))?;
            return Ok(Decision::Existing(existing.to_proto()));
        }
        let cause = Cause {
            correlation_id: reservation_id.to_owned(),
            causation_id: reservation_id.to_owned(),
            actor_id: actor.to_owned(),
        };
        events::decided(tx, payment.clone(), &cause, now).await?;
        Ok(Decision::Decided(payment))
    }

    async fn existing(&self, reservation_id: &str) -> Result<Payment, PaymentError> {
        repo::find_by_reservation(&self.db, reservation_id)
            .await?
            .map(|r| r.to_proto())
            .ok_or_else(|| PaymentError::FailedPrecondition(format!("the payment of reservation {reservation_id} is being written; retry")))
    }
}
