//! The gRPC face of the message service: decode, authenticate, call the domain, encode.

use sharemesh_contracts::message::v1::message_service_server::MessageService;
use sharemesh_contracts::message::v1::{ListMessagesRequest, ListMessagesResponse};
use sharemesh_mesh::auth::Caller;
use tonic::{Request, Response, Status};

use crate::Messages;

/// Implements `sharemesh.message.v1.MessageService`.
#[derive(Clone)]
pub struct MessageGrpc {
    messages: Messages,
}

impl MessageGrpc {
    /// Serves `messages`.
    pub fn new(messages: Messages) -> Self {
        Self { messages }
    }
}

#[tonic::async_trait]
impl MessageService for MessageGrpc {
    async fn list_messages(&self, req: Request<ListMessagesRequest>) -> Result<Response<ListMessagesResponse>, Status> {
        let caller = Caller::from_request(&req)?;
        let r = req.into_inner();
        let page = self.messages.list(&caller, r.page_size, &r.page_token).await?;
        Ok(Response::new(ListMessagesResponse {
            messages: page.messages,
            next_page_token: page.next_page_token,
        }))
    }
}
