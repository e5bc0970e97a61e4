//! The gRPC face of the reservation service: decode, authenticate, call the domain, encode.

use sharemesh_contracts::reservation::v1::reservation_service_server::ReservationService;
use sharemesh_contracts::reservation::v1::{
    CancelReservationRequest, CancelReservationResponse, ConfirmReservationRequest, ConfirmReservationResponse, GetReservationRequest,
    GetReservationResponse, ListReservationsRequest, ListReservationsResponse, PlaceReservationRequest, PlaceReservationResponse,
    ReservationStatus,
};
use sharemesh_mesh::auth::Caller;
use tonic::{Request, Response, Status};

use crate::Reservations;
use crate::domain::ReservationError;
use crate::saga::PlaceRequest;

/// Implements `sharemesh.reservation.v1.ReservationService`.
#[derive(Clone)]
pub struct ReservationGrpc {
    reservations: Reservations,
}

impl ReservationGrpc {
    /// Serves `reservations`.
    pub fn new(reservations: Reservations) -> Self {
        Self { reservations }
    }
}

#[tonic::async_trait]
impl ReservationService for ReservationGrpc {
    async fn place_reservation(&self, req: Request<PlaceReservationRequest>) -> Result<Response<PlaceReservationResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let window = match &r.window {
            None => None,
            Some(w) => Some(w.to_ms_checked().map_err(|reason| ReservationError::invalid("window", reason))?),
        };
        let place = PlaceRequest {
            listing_id: r.listing_id,
            window,
            card: r.card,
            request_id: r.request_id,
        };
        let reservation = self.reservations.place(&caller, place).await?;
        Ok(Response::new(PlaceReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn get_reservation(&self, req: Request<GetReservationRequest>) -> Result<Response<GetReservationResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let reservation = self.reservations.get(&caller, &req.into_inner().reservation_id).await?;
        Ok(Response::new(GetReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn list_reservations(&self, req: Request<ListReservationsRequest>) -> Result<Response<ListReservationsResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let status = ReservationStatus::try_from(r.status)
            .map_err(|_| ReservationError::invalid("status", format!("unknown value {}", r.status)))?;
        let page = self
            .reservations
            .list(&caller, status, &r.listing_id, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListReservationsResponse {
            reservations: page.reservations,
            next_page_token: page.next_page_token,
        }))
    }

    async fn confirm_reservation(&self, req: Request<ConfirmReservationRequest>) -> Result<Response<ConfirmReservationResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let reservation = self.reservations.confirm(&caller, &req.into_inner().reservation_id).await?;
        Ok(Response::new(ConfirmReservationResponse {
            reservation: Some(reservation),
        }))
    }

    async fn cancel_reservation(&self, req: Request<CancelReservationRequest>) -> Result<Response<CancelReservationResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let reservation = self.reservations.cancel(&caller, &r.reservation_id, &r.reason).await?;
        Ok(Response::new(CancelReservationResponse {
            reservation: Some(reservation),
        }))
    }
}
