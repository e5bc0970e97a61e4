//! The gRPC face of the view service.

use sharemesh_contracts::catalog::v1::ListingStatus;
use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_contracts::view::v1::view_service_server::ViewService;
use sharemesh_contracts::view::v1::{
    GetListingViewRequest, GetListingViewResponse, GetMyPageRequest, GetMyPageResponse, ListListingViewsRequest, ListListingViewsResponse,
};
use sharemesh_mesh::auth::Caller;
use tonic::{Request, Response, Status};

use crate::Views;
use crate::domain::ViewError;

/// Implements `sharemesh.view.v1.ViewService`.
#[derive(Clone)]
pub struct ViewGrpc {
    views: Views,
}

impl ViewGrpc {
    /// Serves `views`.
    pub fn new(views: Views) -> Self {
        Self { views }
    }
}

#[tonic::async_trait]
impl ViewService for ViewGrpc {
    async fn get_listing_view(&self, req: Request<GetListingViewRequest>) -> Result<Response<GetListingViewResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let view = self.views.get_listing_view(&caller, &req.into_inner().listing_id).await?;
        Ok(Response::new(GetListingViewResponse { listing_view: Some(view) }))
    }

    async fn list_listing_views(&self, req: Request<ListListingViewsRequest>) -> Result<Response<ListListingViewsResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let kind = ListingKind::try_from(r.kind).map_err(|_| ViewError::invalid("kind", format!("unknown value {}", r.kind)))?;
        let status = ListingStatus::try_from(r.status).map_err(|_| ViewError::invalid("status", format!("unknown value {}", r.status)))?;
        let (listing_views, next_page_token) = self
            .views
            .list_listing_views(&caller, kind, status, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(ListListingViewsResponse {
            listing_views,
            next_page_token,
        }))
    }

    async fn get_my_page(&self, req: Request<GetMyPageRequest>) -> Result<Response<GetMyPageResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let (my_page, next_page_token) = self.views.my_page(&caller, r.page_size, &r.page_token).await?;
        Ok(Response::new(GetMyPageResponse {
            my_page: Some(my_page),
            next_page_token,
        }))
    }
}
