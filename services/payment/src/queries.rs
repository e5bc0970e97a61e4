//! GetPayment and ListPayments. A payment is visible to its customer, to admins and to other
//! services; everybody else sees only their own payments as a customer. Hosts pay nothing as
//! hosts, so a host listing payments sees the ones where the host is the customer (none unless
//! the host also reserved something), never those of its listings' customers.

use sharemesh_contracts::payment::v1::Payment;
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::page;

use crate::Payments;
use crate::domain::{self, PaymentError};
use crate::storage::payments::{self as repo, ListFilter, PaymentRow};

/// A page of payments.
#[derive(Debug, Clone)]
pub struct PaymentPage {
    /// The payments.
    pub payments: Vec<Payment>,
    /// Token of the next page ("" on the last).
    pub next_page_token: String,
}

/// True when the caller sees every payment (admins and services).
fn sees_all(caller: &Caller) -> bool {
    matches!(caller.role, Role::Admin | Role::Service)
}

impl Payments {
    /// One payment: NOT_FOUND when absent, PERMISSION_DENIED when it is another customer's.
    pub async fn get(&self, caller: &Caller, payment_id: &str) -> Result<Payment, PaymentError> {
        domain::validate_id("payment_id", payment_id)?;
        let row = self
            .by_id
            .get(&self.db, payment_id.to_owned())
            .await?
            .ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} not found")))?;
        if !sees_all(caller) && caller.id != row.customer_id {
            return Err(PaymentError::PermissionDenied(format!(
                "payment {payment_id} belongs to another customer"
            )));
        }
        Ok(row.to_proto())
    }

    /// Payments newest first, optionally of one reservation: the caller's own, or all for
    /// admins and services.
    pub async fn list(&self, caller: &Caller, reservation_id: &str, page_size: i32, page_token: &str) -> Result<PaymentPage, PaymentError> {
        if !reservation_id.is_empty() {
            domain::validate_id("reservation_id", reservation_id)?;
        }
        let filter = ListFilter {
            customer_id: (!sees_all(caller)).then(|| caller.id.clone()),
            reservation_id: Some(reservation_id.to_owned()).filter(|r| !r.is_empty()),
        };
        let fingerprint = format!("{filter:?}");
        let page = page::decode(page_size, page_token, &fingerprint).map_err(|e| PaymentError::invalid(e.field(), e.to_string()))?;
        let mut rows = repo::list(&self.db, &filter, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        Ok(PaymentPage {
            payments: rows.iter().map(PaymentRow::to_proto).collect(),
            next_page_token: page::next_token(page, has_more, &fingerprint),
        })
    }
}
