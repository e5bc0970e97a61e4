//! The gRPC face of the payment service: decode, authorise, call the domain, encode.
//! ApprovePayment is internal: it answers only callers with the `service` or `admin` role.
//! Requests are never logged: an ApprovePaymentRequest carries a full card number.

use sharemesh_contracts::payment::v1::payment_service_server::PaymentService;
use sharemesh_contracts::payment::v1::{
    ApprovePaymentRequest, ApprovePaymentResponse, GetPaymentRequest, GetPaymentResponse, ListPaymentsRequest, ListPaymentsResponse,
};
use sharemesh_mesh::auth::Caller;
use tonic::{Request, Response, Status};

use crate::Payments;

/// Implements `sharemesh.payment.v1.PaymentService`.
#[derive(Clone)]
pub struct PaymentGrpc {
    payments: Payments,
}

impl PaymentGrpc {
    /// Serves `payments`.
    pub fn new(payments: Payments) -> Self {
        Self { payments }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentGrpc {
    async fn approve_payment(&self, req: Request<ApprovePaymentRequest>) -> Result<Response<ApprovePaymentResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let payment = self
            .payments
            .approve(&caller, &r.reservation_id, &r.customer_id, r.amount.as_ref(), r.card.as_ref())
            .await?;
        Ok(Response::new(ApprovePaymentResponse { payment: Some(payment) }))
    }

    async fn get_payment(&self, req: Request<GetPaymentRequest>) -> Result<Response<GetPaymentResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let payment = self.payments.get(&caller, &req.into_inner().payment_id).await?;
        Ok(Response::new(GetPaymentResponse { payment: Some(payment) }))
    }

    async fn list_payments(&self, req: Request<ListPaymentsRequest>) -> Result<Response<ListPaymentsResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let page = self.payments.list(&caller, &r.reservation_id, r.page_size, &r.page_token).await?;
        Ok(Response::new(ListPaymentsResponse {
            payments: page.payments,
            next_page_token: page.next_page_token,
        }))
    }
}
