//! The gRPC face of the catalog: decode, authorise, call the domain, encode. Internal RPCs
//! (hold, confirm, release) answer only callers with the `service` or `admin` role.

use sharemesh_contracts::catalog::v1::catalog_service_server::CatalogService;
use sharemesh_contracts::catalog::v1::{
    ConfirmHoldRequest, ConfirmHoldResponse, DeleteListingRequest, DeleteListingResponse, GetListingRequest, GetListingResponse,
    HoldListingRequest, HoldListingResponse, ListListingsRequest, ListListingsResponse, RegisterListingRequest, RegisterListingResponse,
    ReleaseHoldRequest, ReleaseHoldResponse, UpdateListingRequest, UpdateListingResponse, listing, register_listing_request,
    update_listing_request,
};
use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_mesh::auth::{Caller, Role};
use tonic::{Request, Response, Status};

use crate::Catalog;
use crate::domain::CatalogError;
use crate::listings::{ListingPatch, NewListing, kind_filter};
use crate::storage::listings::ListFilter;

/// Implements `sharemesh.catalog.v1.CatalogService`.
#[derive(Clone)]
pub struct CatalogGrpc {
    catalog: Catalog,
}

impl CatalogGrpc {
    /// Serves `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

fn request_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn internal_caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let caller = Caller::from_request(req)?;
    // Holds and bookings are steps of the saga: services only, admins included out.
    caller.require(&[Role::Service])?;
    Ok(caller)
}

fn registered_details(d: register_listing_request::Details) -> listing::Details {
    match d {
        register_listing_request::Details::Car(c) => listing::Details::Car(c),
        register_listing_request::Details::Talent(t) => listing::Details::Talent(t),
    }
}

fn updated_details(d: update_listing_request::Details) -> listing::Details {
    match d {
        update_listing_request::Details::Car(c) => listing::Details::Car(c),
        update_listing_request::Details::Talent(t) => listing::Details::Talent(t),
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogGrpc {
    async fn register_listing(&self, req: Request<RegisterListingRequest>) -> Result<Response<RegisterListingResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let rid = request_id(&req);
        let r = req.into_inner();
        let new = NewListing {
            title: r.title,
            description: r.description,
            price: r.price,
            details: r.details.map(registered_details),
        };
        let listing = self.catalog.register(&caller, new, &rid).await?;
        Ok(Response::new(RegisterListingResponse { listing: Some(listing) }))
    }

    async fn update_listing(&self, req: Request<UpdateListingRequest>) -> Result<Response<UpdateListingResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let rid = request_id(&req);
        let r = req.into_inner();
        let patch = ListingPatch {
            title: r.title,
            description: r.description,
            price: r.price,
            details: r.details.map(updated_details),
        };
        let listing = self.catalog.update(&caller, &r.listing_id, patch, &rid).await?;
        Ok(Response::new(UpdateListingResponse { listing: Some(listing) }))
    }

    async fn delete_listing(&self, req: Request<DeleteListingRequest>) -> Result<Response<DeleteListingResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let rid = request_id(&req);
        let listing = self.catalog.delete(&caller, &req.into_inner().listing_id, &rid).await?;
        Ok(Response::new(DeleteListingResponse { listing: Some(listing) }))
    }

    async fn get_listing(&self, req: Request<GetListingRequest>) -> Result<Response<GetListingResponse>, Status> {
        Caller::from_request(&req)?;
        let listing = self.catalog.get(&req.into_inner().listing_id).await?;
        Ok(Response::new(GetListingResponse { listing: Some(listing) }))
    }

    async fn list_listings(&self, req: Request<ListListingsRequest>) -> Result<Response<ListListingsResponse>, Status> {
        Caller::from_request(&req)?;
        let r = req.into_inner();
        let kind = ListingKind::try_from(r.kind).map_err(|_| CatalogError::invalid("kind", format!("unknown value {}", r.kind)))?;
        let available_during = match &r.available_during {
            None => None,
            Some(w) => Some(
                w.to_ms_checked()
                    .map_err(|reason| CatalogError::invalid("available_during", reason))?,
            ),
        };
        let filter = ListFilter {
            kind: kind_filter(kind),
            category: Some(r.category).filter(|c| !c.is_empty()),
            host_id: Some(r.host_id).filter(|h| !h.is_empty()),
            available_during,
            include_deleted: r.include_deleted,
        };
        let page = self.catalog.list(filter, r.page_size, &r.page_token).await?;
        Ok(Response::new(ListListingsResponse {
            listings: page.listings,
            next_page_token: page.next_page_token,
        }))
    }

    async fn hold_listing(&self, req: Request<HoldListingRequest>) -> Result<Response<HoldListingResponse>, Status> {
        internal_caller(&req)?;
        let r = req.into_inner();
        let held = self
            .catalog
            .hold(
                &r.listing_id,
                &r.reservation_id,
                r.window
                    .as_ref()
                    .map(|w| w.to_ms_checked())
                    .transpose()
                    .map_err(|reason| CatalogError::invalid("window", reason))?,
            )
            .await?;
        Ok(Response::new(HoldListingResponse {
            hold: Some(held.hold),
            listing: Some(held.listing),
            amount: Some(held.amount),
        }))
    }

    async fn confirm_hold(&self, req: Request<ConfirmHoldRequest>) -> Result<Response<ConfirmHoldResponse>, Status> {
        internal_caller(&req)?;
        let hold = self.catalog.confirm(&req.into_inner().reservation_id).await?;
        Ok(Response::new(ConfirmHoldResponse { hold: Some(hold) }))
    }

    async fn release_hold(&self, req: Request<ReleaseHoldRequest>) -> Result<Response<ReleaseHoldResponse>, Status> {
        internal_caller(&req)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() { "released" } else { r.reason.as_str() };
        let hold = self.catalog.release(&r.reservation_id, reason).await?;
        Ok(Response::new(ReleaseHoldResponse { hold: Some(hold) }))
    }
}
