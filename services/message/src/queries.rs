//! ListMessages: a caller sees only the messages addressed to them, newest first, whatever their
//! role. Admins and services get no wider view here: a message is a private notification, and
//! the admin's own inbox is what an admin lists.

use sharemesh_contracts::message::v1::Message;
use sharemesh_mesh::auth::Caller;
use sharemesh_mesh::page;

use crate::Messages;
use crate::domain::MessageError;
use crate::storage::messages::{self as repo, MessageRow};

/// A page of messages.
#[derive(Debug, Clone)]
pub struct MessagePage {
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// Token of the next page ("" on the last).
    pub next_page_token: String,
}

impl Messages {
    /// The caller's own messages (as customer and as host), newest first. A page token is bound
    /// to the caller: another caller's token is INVALID_ARGUMENT.
    pub async fn list(&self, caller: &Caller, page_size: i32, page_token: &str) -> Result<MessagePage, MessageError> {
        let fingerprint = format!("recipient={}", caller.id);
        let page = page::decode(page_size, page_token, &fingerprint).map_err(|e| MessageError::invalid(e.field(), e.to_string()))?;
        let mut rows = repo::list_for_recipient(&self.db, &caller.id, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        Ok(MessagePage {
            messages: rows.iter().map(MessageRow::to_proto).collect(),
            next_page_token: page::next_token(page, has_more, &fingerprint),
        })
    }
}
